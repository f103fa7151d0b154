//! Compiled policy modules on disk, so that a restart does not compile
//! every module again with Cranelift (about 0.1 s each on a busy node).
//!
//! An entry is keyed by the module's sha256 and by an engine key: the hash
//! of wasmtime's `precompile_compatibility_hash` (target, compiler flags,
//! tunables, wasm features and the wasmtime version) plus this cache's
//! format. An entry is trusted only after its own checks pass: magic, both
//! keys, payload length and payload sha256. Anything else (a torn write, a
//! file from another wasmtime or host, a flipped bit) is a miss: the module
//! is compiled again and the entry rewritten.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// First bytes of every entry; the digit is the format version.
const MAGIC: &[u8; 8] = b"SYMODC1\n";
/// magic, module sha256, engine key, payload sha256, payload length.
const HEADER_LEN: usize = 8 + 32 + 32 + 32 + 8;
/// Entries larger than this are not read (a policy compiles to far less).
const MAX_ENTRY_BYTES: u64 = 256 << 20;
/// Entries kept; past it the least recently written go (every module
/// version ever rolled out would otherwise stay on the node's disk).
const MAX_ENTRIES: usize = 256;
/// A temporary file this old was left by a process that died mid-write.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(60);

/// Feeds `Hash` input into sha256, so that the engine key is the same in
/// every process (std's `DefaultHasher` promises no such thing).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

/// Why an entry was not used. Logged at debug and counted as a miss.
#[derive(Debug, thiserror::Error)]
pub enum CacheMiss {
    #[error("no entry")]
    Absent,
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("entry is {0} bytes, more than a compiled policy can be")]
    TooLarge(u64),
    #[error("not a Switchyard module cache entry (bad magic or short header)")]
    Header,
    #[error("entry was written for another module or engine configuration")]
    Key,
    #[error("payload length or sha256 does not match the header (corrupt or torn write)")]
    Checksum,
    #[error("wasmtime refused the entry: {0}")]
    Deserialize(String),
}

#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
    engine_key: [u8; 32],
}

impl ModuleCache {
    /// A cache in `dir` for modules compiled by `engine`. The directory is
    /// created on first store, not here: a read-only or missing directory
    /// only costs compile time.
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        MAGIC.hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: dir.to_owned(),
            engine_key: hasher.0.finalize().into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<module sha256>-<engine key, 16 hex>.cwasm`: entries of several
    /// wasmtime versions can share a hostPath during a rolling upgrade.
    pub fn path_for(&self, module_sha256: &[u8; 32]) -> PathBuf {
        let name = format!(
            "{}-{}.cwasm",
            hex(module_sha256),
            &hex(&self.engine_key)[..16]
        );
        self.dir.join(name)
    }

    /// The compiled module for `module_sha256`, if a valid entry exists.
    pub fn load(&self, engine: &Engine, module_sha256: &[u8; 32]) -> Result<Module, CacheMiss> {
        let path = self.path_for(module_sha256);
        let len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheMiss::Absent),
            Err(e) => return Err(CacheMiss::Read(e)),
        };
        if len > MAX_ENTRY_BYTES {
            return Err(CacheMiss::TooLarge(len));
        }
        let bytes = std::fs::read(&path).map_err(CacheMiss::Read)?;
        let payload = self.verify(&bytes, module_sha256)?;
        deserialize_verified(engine, payload)
    }

    /// Checks the header against this module and engine, and the payload
    /// against its recorded length and sha256; returns the payload.
    fn verify<'a>(&self, bytes: &'a [u8], module_sha256: &[u8; 32]) -> Result<&'a [u8], CacheMiss> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(CacheMiss::Header);
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if header[8..40] != module_sha256[..] || header[40..72] != self.engine_key[..] {
            return Err(CacheMiss::Key);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[104..112]);
        if u64::from_le_bytes(len) != payload.len() as u64
            || header[72..104] != Sha256::digest(payload)[..]
        {
            return Err(CacheMiss::Checksum);
        }
        Ok(payload)
    }

    /// Writes the entry for a freshly compiled module: to a temporary file
    /// first, renamed into place, so that a reader never sees half of it.
    pub fn store(&self, module: &Module, module_sha256: &[u8; 32]) -> std::io::Result<PathBuf> {
        let payload = module.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path_for(module_sha256);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        let written = (|| {
            file.write_all(MAGIC)?;
            file.write_all(module_sha256)?;
            file.write_all(&self.engine_key)?;
            file.write_all(&Sha256::digest(&payload))?;
            file.write_all(&(payload.len() as u64).to_le_bytes())?;
            file.write_all(&payload)?;
            file.sync_all()
        })();
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.prune(MAX_ENTRIES);
        Ok(path)
    }

    /// Keeps the `keep` most recently written entries, and removes
    /// temporary files that a dead process left. Best effort: an entry
    /// removed under a reader is a miss for it, nothing worse.
    fn prune(&self, keep: usize) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        let mut entries = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.contains(".tmp.") {
                if now.duration_since(modified).unwrap_or_default() > STALE_TMP {
                    let _ = std::fs::remove_file(&path);
                }
            } else if name.ends_with(".cwasm") {
                entries.push((modified, path));
            }
        }
        if entries.len() <= keep {
            return;
        }
        entries.sort();
        for (_, path) in &entries[..entries.len() - keep] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The one unsafe step of the cache.
///
/// Invariant: `payload` is a byte-for-byte copy of what `Module::serialize`
/// returned in a process whose engine had the same
/// `precompile_compatibility_hash` as `engine`. `verify` establishes it:
/// the engine key in the header matches this engine's, and the payload's
/// length and sha256 match the ones written next to it by `store`, which
/// only ever writes `Module::serialize` output. The bytes are verified and
/// deserialized from the same in-memory buffer (not mmap'd from the file),
/// so a later change to the file cannot alter the code that runs. The
/// cache directory must be writable only by the proxy (it is as trusted
/// as the binary): the checksum catches corruption, not a forger.
fn deserialize_verified(engine: &Engine, payload: &[u8]) -> Result<Module, CacheMiss> {
    // SAFETY: see the invariant above; wasmtime also checks its own
    // header (version and engine flags) and errs rather than misreading.
    unsafe { Module::deserialize(engine, payload) }
        .map_err(|e| CacheMiss::Deserialize(format!("{e:#}")))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (memory (export "memory") 1)
        (func (export "answer") (result i32) i32.const 42))"#;

    /// A directory of its own per test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("sy-cache-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("tempdir");
            Self(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup() -> (Engine, ModuleCache, TempDir, [u8; 32], Module) {
        let engine = Engine::default();
        let dir = TempDir::new();
        let cache = ModuleCache::new(&dir.path().join("modules"), &engine);
        let sha: [u8; 32] = Sha256::digest(WAT.as_bytes()).into();
        let module = Module::new(&engine, WAT).expect("compile");
        (engine, cache, dir, sha, module)
    }

    fn answer(engine: &Engine, module: &Module) -> i32 {
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instantiate");
        let f = instance
            .get_typed_func::<(), i32>(&mut store, "answer")
            .expect("export");
        f.call(&mut store, ()).expect("call")
    }

    #[test]
    fn round_trip() {
        let (engine, cache, _dir, sha, module) = setup();
        assert!(matches!(cache.load(&engine, &sha), Err(CacheMiss::Absent)));
        cache.store(&module, &sha).expect("store");
        let loaded = cache.load(&engine, &sha).expect("hit");
        assert_eq!(answer(&engine, &loaded), 42);
    }

    #[test]
    fn corrupt_payload_is_a_miss() {
        let (engine, cache, _dir, sha, module) = setup();
        let path = cache.store(&module, &sha).expect("store");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            cache.load(&engine, &sha),
            Err(CacheMiss::Checksum)
        ));
    }

    #[test]
    fn truncated_entry_is_a_miss() {
        let (engine, cache, _dir, sha, module) = setup();
        let path = cache.store(&module, &sha).expect("store");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        assert!(matches!(
            cache.load(&engine, &sha),
            Err(CacheMiss::Checksum)
        ));
        std::fs::write(&path, &bytes[..10]).expect("write");
        assert!(matches!(cache.load(&engine, &sha), Err(CacheMiss::Header)));
    }

    #[test]
    fn garbage_file_is_a_miss() {
        let (engine, cache, _dir, sha, _module) = setup();
        std::fs::create_dir_all(cache.dir()).expect("mkdir");
        std::fs::write(cache.path_for(&sha), vec![0xAB; 4096]).expect("write");
        assert!(matches!(cache.load(&engine, &sha), Err(CacheMiss::Header)));
    }

    #[test]
    fn entry_of_another_module_or_engine_is_a_miss() {
        let (engine, cache, _dir, sha, module) = setup();
        let path = cache.store(&module, &sha).expect("store");
        // Another module's entry copied under this module's name.
        let other = [7u8; 32];
        std::fs::copy(&path, cache.path_for(&other)).expect("copy");
        assert!(matches!(cache.load(&engine, &other), Err(CacheMiss::Key)));
        // An engine with another configuration has another key (and file).
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let foreign = Engine::new(&config).expect("engine");
        let foreign_cache = ModuleCache::new(cache.dir(), &foreign);
        assert_ne!(foreign_cache.path_for(&sha), path);
        std::fs::copy(&path, foreign_cache.path_for(&sha)).expect("copy");
        assert!(matches!(
            foreign_cache.load(&foreign, &sha),
            Err(CacheMiss::Key)
        ));
    }

    #[test]
    fn old_entries_are_pruned_past_the_cap() {
        let (engine, cache, _dir, _sha, module) = setup();
        let shas: Vec<[u8; 32]> = (0..5u8).map(|i| [i; 32]).collect();
        let now = std::time::SystemTime::now();
        for (age, sha) in (0..5u64).rev().zip(&shas) {
            let path = cache.store(&module, sha).expect("store");
            // Distinct modification times, oldest first.
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(now - std::time::Duration::from_secs(age * 10)))
                .expect("set mtime");
        }
        std::fs::write(cache.dir().join("x.cwasm.tmp.1"), b"half").expect("tmp");
        cache.prune(3);
        for sha in &shas[..2] {
            assert!(!cache.path_for(sha).exists(), "oldest entries go");
        }
        for sha in &shas[2..] {
            assert!(cache.load(&engine, sha).is_ok(), "newest entries stay");
        }
        // A fresh temporary file may belong to a live writer: kept.
        assert!(cache.dir().join("x.cwasm.tmp.1").exists());
    }

    #[test]
    fn unwritable_directory_is_an_error_not_a_panic() {
        let (_engine, _cache, dir, sha, module) = setup();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let cache = ModuleCache::new(&file.join("sub"), &Engine::default());
        assert!(cache.store(&module, &sha).is_err());
    }

    #[test]
    fn policy_engine_fills_the_cache_and_recompiles_over_a_corrupt_entry() {
        use super::super::engine::PolicyEngine;
        let dir = TempDir::new();
        let cfg = crate::config::PolicyConfig {
            cache_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let sha: [u8; 32] = Sha256::digest(WAT.as_bytes()).into();
        let first = PolicyEngine::new(&cfg).expect("engine");
        first.compile(WAT.as_bytes(), &sha).expect("compile");
        assert_eq!(
            first
                .cache_misses
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A restart: same config, so the entry is used.
        let second = PolicyEngine::new(&cfg).expect("engine");
        second.compile(WAT.as_bytes(), &sha).expect("compile");
        assert_eq!(
            second.cache_hits.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Corrupt every entry: the module still compiles, and the entry is
        // rewritten so that the next restart hits again.
        for entry in std::fs::read_dir(dir.path()).expect("list").flatten() {
            std::fs::write(entry.path(), b"SYMODC1\nnot a module").expect("write");
        }
        let third = PolicyEngine::new(&cfg).expect("engine");
        let (module, cached) = third.compile(WAT.as_bytes(), &sha).expect("compile");
        assert!(module.get_export("answer").is_some());
        assert!(!cached);
        assert_eq!(
            third
                .cache_misses
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let fourth = PolicyEngine::new(&cfg).expect("engine");
        assert!(fourth.compile(WAT.as_bytes(), &sha).expect("compile").1);
        assert_eq!(
            fourth.cache_hits.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_module_compiled_lately_is_taken_from_memory() {
        use super::super::engine::PolicyEngine;
        let engine = PolicyEngine::new(&crate::config::PolicyConfig::default()).expect("engine");
        let sha: [u8; 32] = Sha256::digest(WAT.as_bytes()).into();
        assert!(!engine.compile(WAT.as_bytes(), &sha).expect("compile").1);
        let (module, cached) = engine.compile(WAT.as_bytes(), &sha).expect("compile");
        assert!(cached);
        assert!(module.get_export("answer").is_some());
        // Other bytes under a known hash are never mistaken for it: the
        // hash is the module's identity, computed by the caller.
        let other: [u8; 32] = Sha256::digest(b"(module)").into();
        assert!(!engine.compile(b"(module)", &other).expect("compile").1);
    }
}
