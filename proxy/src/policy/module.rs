//! Loading a policy module: size limit, compile (once per content hash),
//! and the static checks of ABI v1 — imports, exports, memory, version.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::{ExternType, FuncType, InstancePre, Module, ValType};

use super::engine::{HostState, PolicyEngine};
use super::layout::ABI_VERSION;

/// A compiled, checked module, ready to instantiate on any worker.
pub struct PolicyModule {
    pub name: Arc<str>,
    /// sha256 of the file, hex.
    pub hash: String,
    pub size: usize,
    pub pre: InstancePre<HostState>,
    pub has_outcome: bool,
    /// Taken from the compiled-module cache rather than compiled.
    pub from_cache: bool,
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicyModule({} {})", self.name, &self.hash[..12])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("module is {size} bytes; policy.maxModuleBytes allows {max}")]
    TooLarge { size: usize, max: u64 },
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error(
        "imports {module}::{name}, which the policy ABI does not provide (only `switchyard` imports: now_ns, random_u64, log, set_error, request_attr)"
    )]
    ForeignImport { module: String, name: String },
    #[error("import switchyard::{name} has type {found}; ABI v1 says {expected}")]
    ImportType {
        name: String,
        found: String,
        expected: String,
    },
    #[error("missing export `{0}` (see policy-sdk/ABI.md)")]
    MissingExport(&'static str),
    #[error("export `{name}` has type {found}; ABI v1 says {expected}")]
    ExportType {
        name: &'static str,
        found: String,
        expected: String,
    },
    #[error("initial memory is {bytes} bytes; policy.memoryLimit allows {limit}")]
    MemoryTooLarge { bytes: u64, limit: usize },
    #[error("sy_abi_version returned {found}; this Switchyard speaks ABI version {ABI_VERSION}")]
    Version { found: i32 },
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

fn sig(params: &[ValType], results: &[ValType]) -> String {
    let list = |tys: &[ValType]| {
        tys.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

fn func_sig(ty: &FuncType) -> String {
    let params: Vec<ValType> = ty.params().collect();
    let results: Vec<ValType> = ty.results().collect();
    sig(&params, &results)
}

/// The import table of ABI v1: name → (params, results).
fn abi_imports() -> HashMap<&'static str, String> {
    use ValType::{I32, I64};
    HashMap::from([
        ("now_ns", sig(&[], &[I64])),
        ("random_u64", sig(&[], &[I64])),
        ("log", sig(&[I32, I32, I32], &[])),
        ("set_error", sig(&[I32, I32], &[])),
        ("request_attr", sig(&[I32, I32, I32, I32, I32], &[I32])),
    ])
}

/// Required exports and their signatures.
fn abi_exports() -> Vec<(&'static str, String, bool)> {
    use ValType::{I32, I64};
    vec![
        ("sy_abi_version", sig(&[], &[I32]), true),
        ("sy_alloc", sig(&[I32], &[I32]), true),
        ("sy_init", sig(&[I32, I32], &[I32]), true),
        ("sy_endpoints", sig(&[I32, I32], &[]), true),
        ("sy_pick", sig(&[I32], &[I32]), true),
        ("sy_outcome", sig(&[I32, I32, I64], &[]), false),
        ("sy_table", sig(&[I32, I32], &[I32]), false),
    ]
}

pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes).into())
}

fn hex(digest: &[u8; 32]) -> String {
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Compiles and checks a module. `name` is its file stem.
pub fn load(engine: &PolicyEngine, name: &str, bytes: &[u8]) -> Result<PolicyModule, ModuleError> {
    if bytes.len() as u64 > engine.max_module_bytes {
        return Err(ModuleError::TooLarge {
            size: bytes.len(),
            max: engine.max_module_bytes,
        });
    }
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let (module, from_cache) = engine
        .compile(bytes, &digest)
        .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
    check_imports(&module)?;
    let has_outcome = check_exports(&module, engine.memory_limit)?;
    let pre = engine
        .linker
        .instantiate_pre(&module)
        .map_err(|e| ModuleError::Instantiate(format!("{e:#}")))?;
    let loaded = PolicyModule {
        name: Arc::from(name),
        hash: hex(&digest),
        size: bytes.len(),
        pre,
        has_outcome,
        from_cache,
    };
    check_version(engine, &loaded)?;
    Ok(loaded)
}

fn check_imports(module: &Module) -> Result<(), ModuleError> {
    let allowed = abi_imports();
    for import in module.imports() {
        let foreign = || ModuleError::ForeignImport {
            module: import.module().to_owned(),
            name: import.name().to_owned(),
        };
        if import.module() != "switchyard" {
            return Err(foreign());
        }
        let expected = allowed.get(import.name()).ok_or_else(foreign)?;
        let found = match import.ty() {
            ExternType::Func(f) => func_sig(&f),
            other => format!("{other:?}"),
        };
        if &found != expected {
            return Err(ModuleError::ImportType {
                name: import.name().to_owned(),
                found,
                expected: expected.clone(),
            });
        }
    }
    Ok(())
}

/// Returns whether the optional `sy_outcome` is there.
fn check_exports(module: &Module, memory_limit: usize) -> Result<bool, ModuleError> {
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) => {
            let bytes = m.minimum().saturating_mul(m.page_size());
            if bytes > memory_limit as u64 {
                return Err(ModuleError::MemoryTooLarge {
                    bytes,
                    limit: memory_limit,
                });
            }
        }
        Some(other) => {
            return Err(ModuleError::ExportType {
                name: "memory",
                found: format!("{other:?}"),
                expected: "memory".into(),
            });
        }
        None => return Err(ModuleError::MissingExport("memory")),
    }
    let mut has_outcome = false;
    for (name, expected, required) in abi_exports() {
        match module.get_export(name) {
            Some(ExternType::Func(f)) => {
                let found = func_sig(&f);
                if found != expected {
                    return Err(ModuleError::ExportType {
                        name,
                        found,
                        expected,
                    });
                }
                has_outcome |= name == "sy_outcome";
            }
            Some(other) => {
                return Err(ModuleError::ExportType {
                    name,
                    found: format!("{other:?}"),
                    expected,
                });
            }
            None if required => return Err(ModuleError::MissingExport(name)),
            None => {}
        }
    }
    Ok(has_outcome)
}

fn check_version(engine: &PolicyEngine, module: &PolicyModule) -> Result<(), ModuleError> {
    let mut store = engine.new_store(module.name.clone());
    let instance = module
        .pre
        .instantiate(&mut store)
        .map_err(|e| ModuleError::Instantiate(format!("{e:#}")))?;
    let version = instance
        .get_typed_func::<(), i32>(&mut store, "sy_abi_version")
        .and_then(|f| f.call(&mut store, ()))
        .map_err(|e| ModuleError::Instantiate(format!("sy_abi_version failed: {e:#}")))?;
    if version != ABI_VERSION {
        return Err(ModuleError::Version { found: version });
    }
    Ok(())
}
