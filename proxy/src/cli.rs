//! Command-line flags. Flags override the config file, as kube-proxy's do.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchyard::catalog::{self, Severity};
use switchyard::config::{Config, IoMode, LogConfig, LogFormat};
use switchyard::sources::FileSource;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A Kubernetes node proxy whose backend choice is made by WebAssembly policies",
    long_about = "Switchyard replaces kube-proxy on a node: it intercepts traffic to Service \
                  addresses and NodePorts with nftables and proxies each connection to a Pod \
                  chosen by a policy.\n\nStart with `switchyard run --manifests conf/services` \
                  (as root), or validate files with `switchyard check`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in the foreground (needs root or CAP_NET_ADMIN).
    Run(RunArgs),
    /// Validate a config file and a manifest directory; exit non-zero on errors.
    Check(CheckArgs),
    /// Check a policy module, or simulate its decisions on real manifests.
    Policy {
        #[command(subcommand)]
        command: crate::policy_cli::PolicyCommand,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (YAML); defaults apply to every absent field.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of Service and EndpointSlice manifests (overrides source.manifests).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig (sets source.kind: kubernetes and source.kubeconfig).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, for traffic policy Local (overrides nodeName; default $NODE_NAME, then the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// io back end of the data plane (overrides dataplane.io).
    #[arg(long, value_enum)]
    pub io: Option<IoMode>,
    /// Engine of the io_uring back end (overrides dataplane.uringEngine).
    #[arg(long, value_enum, env = "SWITCHYARD_URING_ENGINE")]
    pub uring_engine: Option<switchyard::config::UringEngine>,
    /// Data-plane worker threads; 0 = one per core (overrides dataplane.workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Directory of `.wasm` policy modules, watched for changes (overrides policy.directory).
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Policy for Services without a switchyard.dev/policy annotation (overrides policy.default).
    #[arg(long, value_name = "NAME")]
    pub default_policy: Option<String>,
    /// Log filter such as `info` or `switchyard=debug` (overrides log.level; RUST_LOG also works).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file to validate.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Manifest directory to validate (default: the config's source.manifests).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
}

impl RunArgs {
    /// The config file (or defaults) with the flags applied, validated.
    pub fn config(&self) -> Result<Config, switchyard::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.manifests {
            config.source.manifests = dir.clone();
        }
        if let Some(file) = &self.kubeconfig {
            config.source.kind = switchyard::config::SourceKind::Kubernetes;
            config.source.kubeconfig = Some(file.clone());
        }
        if let Some(name) = &self.node_name {
            config.node_name = Some(name.clone());
        }
        if let Some(io) = self.io {
            config.dataplane.io = io;
        }
        if let Some(engine) = self.uring_engine {
            config.dataplane.uring_engine = engine;
        }
        if let Some(workers) = self.workers {
            config.dataplane.workers = workers;
        }
        if let Some(dir) = &self.policies {
            config.policy.directory = dir.clone();
        }
        if let Some(name) = &self.default_policy {
            config.policy.default = name.clone();
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        let flags = std::path::Path::new("(command line)");
        config
            .validate()
            .map_err(|(field, message)| switchyard::config::ConfigError::Field {
                file: self.config.clone().unwrap_or_else(|| flags.to_owned()),
                field: field.to_owned(),
                message,
            })?;
        Ok(config)
    }
}

/// Node name: config/flag, then `$NODE_NAME`, then the host name.
pub fn node_name(config: &Config) -> String {
    config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

pub fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env)?,
        _ => EnvFilter::try_new(&log.level)?,
    };
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!(e))
}

/// `switchyard check`: every problem on stdout, one per line.
pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut errors = 0usize;
    let mut config = Config::default();
    if let Some(path) = &args.config {
        match Config::load(path) {
            Ok(c) => {
                config = c;
                println!("{}: ok", path.display());
            }
            Err(e) => {
                println!("error: {e}");
                errors += 1;
            }
        }
    }
    let dir = args
        .manifests
        .clone()
        .unwrap_or_else(|| config.source.manifests.clone());
    let mut source = FileSource::new(&dir);
    let scan = source.rescan()?;
    for p in &scan.problems {
        let level = if p.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        errors += usize::from(p.severity == Severity::Error);
        println!("{level}: {p}");
    }
    let manifests = source.manifests();
    let node = catalog::node_context(
        config.node_name.clone(),
        manifests.node(config.node_name.as_deref()),
    );
    let built = catalog::build(&manifests.services, &manifests.slices, &node);
    for p in &built.problems {
        let level = if p.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        errors += usize::from(p.severity == Severity::Error);
        println!("{level}: {p}");
    }
    println!(
        "{}: {} Services, {} EndpointSlices, {} frontends; {errors} error(s)",
        dir.display(),
        manifests.services.len(),
        manifests.slices.len(),
        built.table.frontends.len() + built.table.node_ports.len()
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
