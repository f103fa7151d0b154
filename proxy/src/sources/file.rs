//! The file source: a directory of manifests, re-read when it changes.
//! A file that fails to parse keeps its last good contents in force, so one
//! bad edit never takes Services away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::file_changes::{FileChanges, Pending};
use super::file_index::{FileIndex, Key};
pub use super::file_watch::{WatchGuard, watch};
use super::manifest::{self, ManifestProblem, Manifests};
use crate::catalog::Severity;

/// Largest manifest file read unless `source.maxManifestBytes` says
/// otherwise; larger ones are rejected, not truncated.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{dir}: cannot read manifest directory: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: cannot watch directory: {source}")]
    Watch {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Manifest files present with their stamps, and files read before that
/// are gone.
type Listing = (Vec<(PathBuf, Stamp)>, Vec<PathBuf>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug)]
struct FileEntry {
    stamp: Stamp,
    /// The last contents that parsed without errors.
    good: Option<Arc<Manifests>>,
}

/// What one rescan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether the set of objects in force changed.
    pub changed: bool,
    /// Problems in files read during this scan (errors and warnings).
    pub problems: Vec<ManifestProblem>,
    /// Files refused whole for their size (`source.maxManifestBytes`).
    pub too_large: usize,
    /// Services whose definition or EndpointSlices changed.
    pub touched: std::collections::BTreeSet<Key>,
    /// Where the rescan's time went (the sync logs it at debug level).
    pub timings: ScanTimings,
}

/// One rescan's phases, each its own duration.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanTimings {
    /// Listing the directory and the stat of every file.
    pub listed: Duration,
    /// Reading and parsing the changed files.
    pub parsed: Duration,
    /// Bringing the index of Services and slices in step with them.
    pub indexed: Duration,
    /// Files read and parsed.
    pub files_read: usize,
}

/// The manifests in force, per file.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
    max_bytes: u64,
    index: FileIndex,
    /// What the watcher saw change since the last rescan.
    changes: Arc<FileChanges>,
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            changes: Arc::new(FileChanges::new(dir.clone())),
            dir,
            files: BTreeMap::new(),
            max_bytes: MAX_MANIFEST_BYTES,
            index: FileIndex::default(),
        }
    }

    /// Sets the largest manifest file read (`source.maxManifestBytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a watcher reports the files it saw change (see [`watch`]).
    pub fn changes(&self) -> Arc<FileChanges> {
        self.changes.clone()
    }

    /// Re-reads the files whose size or mtime changed, and drops files that
    /// were removed: of the whole directory, or only of the files the
    /// watcher named since the last rescan when it could name them.
    pub fn rescan(&mut self) -> Result<Scan, SourceError> {
        let mut scan = Scan::default();
        let start = Instant::now();
        let (present, gone) = match self.changes.take() {
            Pending::All => self.list_all()?,
            Pending::Files(paths) => self.stat_named(paths),
        };
        for path in gone {
            if let Some(entry) = self.files.remove(&path) {
                let touched = self.index.replace(&path, entry.good.as_ref(), None);
                scan.touched.extend(touched);
                scan.changed = true;
            }
        }
        let changed: Vec<(PathBuf, Stamp)> = present
            .into_iter()
            .filter(|(path, stamp)| self.files.get(path).is_none_or(|e| e.stamp != *stamp))
            .collect();
        scan.timings.listed = start.elapsed();
        scan.timings.files_read = changed.len();
        let parsed = read_all(&changed, self.max_bytes);
        scan.timings.parsed = start.elapsed() - scan.timings.listed;
        for ((path, stamp), (parsed, problems)) in changed.into_iter().zip(parsed) {
            scan.too_large += usize::from(stamp.len > self.max_bytes);
            let ok = !problems.iter().any(|p| p.severity == Severity::Error);
            scan.problems.extend(problems);
            let entry = self.files.entry(path.clone()).or_insert(FileEntry {
                stamp: stamp.clone(),
                good: None,
            });
            entry.stamp = stamp;
            if ok {
                let new = Arc::new(parsed);
                let touched = self.index.replace(&path, entry.good.as_ref(), Some(&new));
                scan.touched.extend(touched);
                entry.good = Some(new);
                scan.changed = true;
            }
        }
        scan.timings.indexed = start.elapsed() - scan.timings.listed - scan.timings.parsed;
        Ok(scan)
    }

    /// Every manifest file of the directory, and the files read before
    /// that are no longer there.
    fn list_all(&self) -> Result<Listing, SourceError> {
        let present = list_manifest_files(&self.dir)?;
        // A set, so that a rescan of many files is linear in them.
        let listed: std::collections::HashSet<&PathBuf> = present.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|path| !listed.contains(path))
            .cloned()
            .collect();
        drop(listed);
        Ok((present, gone))
    }

    /// The named files that are manifest files now, and those named that
    /// were read before and are no longer there (removed, renamed away,
    /// replaced by something that is not a file).
    fn stat_named(&self, paths: std::collections::BTreeSet<PathBuf>) -> Listing {
        let mut present = Vec::new();
        let mut gone = Vec::new();
        for name in paths.iter().filter_map(|p| p.file_name()) {
            let path = self.dir.join(name);
            match manifest_stamp(&path) {
                Some(stamp) => present.push((path, stamp)),
                None if self.files.contains_key(&path) => gone.push(path),
                None => {}
            }
        }
        (present, gone)
    }

    /// Makes the next rescan re-read every file (a forced reload). The
    /// contents in force stay until then.
    pub fn invalidate(&mut self) {
        self.changes.everything();
        for entry in self.files.values_mut() {
            entry.stamp = Stamp {
                modified: None,
                len: u64::MAX,
            };
        }
    }

    /// The objects in force, by Service.
    pub fn index(&self) -> &FileIndex {
        &self.index
    }

    /// The Node called `node_name`, if a manifest has it.
    pub fn node(&self, node_name: Option<&str>) -> Option<&k8s_openapi::api::core::v1::Node> {
        self.files
            .values()
            .filter_map(|e| e.good.as_ref())
            .find_map(|m| m.node(node_name))
    }

    /// The addresses of the Node called `node_name`, if a manifest has it.
    pub fn node_addresses(&self, node_name: Option<&str>) -> Vec<std::net::IpAddr> {
        self.files
            .values()
            .filter_map(|e| e.good.as_ref())
            .map(|m| m.node_addresses(node_name))
            .find(|a| !a.is_empty())
            .unwrap_or_default()
    }

    /// Every object in force, from every file's last good contents.
    pub fn manifests(&self) -> Manifests {
        let mut all = Manifests::default();
        for good in self.files.values().filter_map(|e| e.good.as_ref()) {
            all.extend(good);
        }
        all
    }
}

/// Reads and parses `files`, results in the same order. YAML parsing is
/// most of a cold start, so several files are parsed on as many threads as
/// the CPUs we may run on (none extra when pinned to one).
fn read_all(files: &[(PathBuf, Stamp)], max_bytes: u64) -> Vec<(Manifests, Vec<ManifestProblem>)> {
    let one = |(path, stamp): &(PathBuf, Stamp)| read_manifest(path, stamp.len, max_bytes);
    // std reads the affinity mask and the cgroup's CPU quota (several
    // /proc and /sys files, ~0.1 ms) to answer: not for a single file,
    // the usual change.
    if files.len() <= 1 {
        return files.iter().map(one).collect();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if threads <= 1 {
        return files.iter().map(one).collect();
    }
    let mut slots: Vec<Option<(Manifests, Vec<ManifestProblem>)>> =
        std::iter::repeat_with(|| None).take(files.len()).collect();
    std::thread::scope(|s| {
        // Interleaved, so that each thread gets a share of any run of big
        // files.
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..files.len())
                        .step_by(threads)
                        .map(|i| (i, one(&files[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(done) => {
                    for (i, r) in done {
                        slots[i] = Some(r);
                    }
                }
                // A parser panic is a bug; re-raise it where it belongs.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots
        .into_iter()
        .zip(files)
        .map(|(r, f)| r.unwrap_or_else(|| one(f)))
        .collect()
}

fn read_manifest(path: &Path, len: u64, max_bytes: u64) -> (Manifests, Vec<ManifestProblem>) {
    let problem = |message: String| ManifestProblem {
        file: path.to_owned(),
        document: 0,
        object: None,
        field: "(file)".into(),
        message,
        severity: Severity::Error,
    };
    if len > max_bytes {
        let message = format!(
            "{len} bytes; a manifest file may be at most {max_bytes} (source.maxManifestBytes)"
        );
        return (Manifests::default(), vec![problem(message)]);
    }
    // The file may grow between the stat and the read: read at most one
    // byte past the limit, so that the limit holds whatever happens.
    let read = std::fs::File::open(path).and_then(|f| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, max_bytes + 1), &mut text)
            .map(|_| text)
    });
    match read {
        Ok(text) if text.len() as u64 > max_bytes => (
            Manifests::default(),
            vec![problem(format!(
                "grew past {max_bytes} bytes while read (source.maxManifestBytes)"
            ))],
        ),
        Ok(text) => manifest::parse(&text, path),
        Err(e) => (
            Manifests::default(),
            vec![problem(format!("cannot read: {e}"))],
        ),
    }
}

/// `*.yaml`, `*.yml` and `*.json` files, skipping hidden entries (a
/// ConfigMap volume's `..data` machinery) and following symlinks.
fn list_manifest_files(dir: &Path) -> Result<Vec<(PathBuf, Stamp)>, SourceError> {
    let dir_err = |source| SourceError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        if let Some(stamp) = manifest_stamp(&path) {
            out.push((path, stamp));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The stamp of `path` if it is a manifest file: `*.yaml`, `*.yml` or
/// `*.json`, not hidden (a ConfigMap volume's `..data` machinery), a file
/// or a symlink to one. A file removed before the stat is simply not there.
fn manifest_stamp(path: &Path) -> Option<Stamp> {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let manifest_ext = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    );
    if hidden || !manifest_ext {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sy-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn bad_edit_keeps_last_good_contents() {
        let dir = tempdir("keep");
        let file = dir.join("web.yaml");
        std::fs::write(&file, SVC).expect("write");
        let mut source = FileSource::new(&dir);
        let scan = source.rescan().expect("scan");
        assert!(scan.changed && scan.problems.is_empty());
        assert_eq!(source.manifests().services.len(), 1);

        std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: [broken\n").expect("write");
        let scan = source.rescan().expect("scan");
        assert!(!scan.changed);
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(
            source.manifests().services.len(),
            1,
            "last good contents stay"
        );

        std::fs::remove_file(&file).expect("rm");
        assert!(source.rescan().expect("scan").changed);
        assert!(source.manifests().services.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn skips_hidden_and_foreign_files() {
        let dir = tempdir("skip");
        std::fs::write(dir.join(".hidden.yaml"), SVC).expect("write");
        std::fs::write(dir.join("notes.txt"), SVC).expect("write");
        let mut source = FileSource::new(&dir);
        source.rescan().expect("scan");
        assert!(source.manifests().services.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_files_parsed_together_keep_their_own_objects_and_problems() {
        let dir = tempdir("many");
        for i in 0..9 {
            let text = if i == 4 {
                "apiVersion: v1\nkind: Service\nmetadata: [broken\n".to_owned()
            } else {
                SVC.replace("name: web", &format!("name: web{i}"))
                    .replace("10.96.0.10", &format!("10.96.0.{}", 10 + i))
            };
            std::fs::write(dir.join(format!("f{i}.yaml")), text).expect("write");
        }
        let mut source = FileSource::new(&dir);
        let scan = source.rescan().expect("scan");
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(scan.problems[0].file, dir.join("f4.yaml"));
        let mut names: Vec<String> = source
            .manifests()
            .services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "web0", "web1", "web2", "web3", "web5", "web6", "web7", "web8"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn watched_rescan_reads_the_named_files_only() {
        let dir = tempdir("named");
        std::fs::write(dir.join("a.yaml"), SVC).expect("write");
        let mut source = FileSource::new(&dir);
        let changes = source.changes();
        changes.watching();
        assert_eq!(source.rescan().expect("scan").timings.files_read, 1);

        // b.yaml appears unnamed: a rescan of what was named does not
        // list the directory, so it is not seen yet.
        let b = SVC
            .replace("name: web", "name: b")
            .replace("10.96.0.10", "10.96.0.11");
        std::fs::write(dir.join("b.yaml"), &b).expect("write");
        let scan = source.rescan().expect("scan");
        assert!(!scan.changed);
        assert_eq!(source.manifests().services.len(), 1);

        // Named, it is read, and it alone.
        changes.event(&[dir.join("b.yaml")]);
        let scan = source.rescan().expect("scan");
        assert!(scan.changed);
        assert_eq!(scan.timings.files_read, 1);
        assert_eq!(source.manifests().services.len(), 2);

        // A named file that is gone leaves; one named but unchanged is not
        // read again.
        std::fs::remove_file(dir.join("b.yaml")).expect("rm");
        changes.event(&[dir.join("b.yaml"), dir.join("a.yaml")]);
        let scan = source.rescan().expect("scan");
        assert!(scan.changed);
        assert_eq!(scan.timings.files_read, 0);
        assert_eq!(source.manifests().services.len(), 1);

        // The poll (or anything the names cannot stand for) lists whole.
        std::fs::write(dir.join("c.yaml"), &b).expect("write");
        changes.everything();
        assert!(source.rescan().expect("scan").changed);
        assert_eq!(source.manifests().services.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_forced_reload_lists_the_directory_again() {
        let dir = tempdir("forced");
        let mut source = FileSource::new(&dir);
        source.changes().watching();
        source.rescan().expect("scan");
        std::fs::write(dir.join("a.yaml"), SVC).expect("write");
        source.invalidate();
        assert!(source.rescan().expect("scan").changed);
        assert_eq!(source.manifests().services.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let mut source = FileSource::new("/nonexistent/switchyard");
        assert!(source.rescan().is_err());
    }
}
