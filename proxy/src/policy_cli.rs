//! `switchyard policy check` and `switchyard policy test`: what a policy
//! author runs before a module goes near a node.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use switchyard::catalog::{self, Route, Scope};
use switchyard::config::PolicyConfig;
use switchyard::policy::simulate::{self, Simulation};
use switchyard::policy::{BoundPolicy, Locality, PolicyEngine, WasmInstance, load_module};
use switchyard::sources::FileSource;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a module against the policy ABI (version, exports, imports, memory).
    Check {
        /// The .wasm file.
        file: PathBuf,
        /// Also hand it this configuration (JSON) and report whether it accepts it.
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
    /// Simulate decisions offline on real manifests and print where connections go.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The .wasm file, or `builtin-round-robin`.
    pub file: PathBuf,
    /// Directory of Service and EndpointSlice manifests.
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// The Service, as NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pub service: String,
    /// Service port name (default: the first port).
    #[arg(long, value_name = "NAME")]
    pub port: Option<String>,
    /// Policy configuration (JSON); default: the Service's switchyard.dev/policy-config.
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Connections to simulate.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Distinct client addresses (default: one per connection).
    #[arg(long)]
    pub clients: Option<usize>,
    /// An endpoint (IP, IP:port or Pod name) whose connects fail; repeatable.
    #[arg(long = "fail", value_name = "ENDPOINT")]
    pub fail: Vec<String>,
    /// Keep every simulated connection open, so load-aware policies see load.
    #[arg(long)]
    pub hold: bool,
    /// This node's name, for locality.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The (first) client address; its family picks the Service's frontend
    /// of that family, whose endpoints alone serve it (default: an IPv4
    /// client when the Service has an IPv4 ClusterIP).
    #[arg(long, value_name = "ADDRESS")]
    pub client: Option<std::net::IpAddr>,
}

pub fn run(command: &PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { file, config } => check(file, config.as_deref()),
        PolicyCommand::Test(args) => test(args),
    }
}

fn engine() -> anyhow::Result<Arc<PolicyEngine>> {
    Ok(PolicyEngine::new(&PolicyConfig::default())?)
}

fn module_name(file: &Path) -> String {
    file.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("policy")
        .to_owned()
}

fn check(file: &Path, config: Option<&str>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let engine = engine()?;
    let module = match load_module(&engine, &module_name(file), &bytes) {
        Ok(module) => module,
        Err(e) => {
            println!("{}: error: {e}", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "{}: ok: ABI version 1, {} bytes, sha256 {}, sy_outcome {}",
        file.display(),
        module.size,
        module.hash,
        if module.has_outcome {
            "exported"
        } else {
            "not exported"
        }
    );
    if let Some(config) = config {
        match WasmInstance::new(&engine, &module, config) {
            Ok(_) => println!("{}: configuration accepted", file.display()),
            Err(e) => {
                println!("{}: error: {e}", file.display());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The ClusterIP frontend of `port` in the client's family (the first
/// ClusterIP's family without `--client`), and the first client.
fn find_frontend(
    args: &TestArgs,
    table: &catalog::ServiceTable,
    route: &Route,
) -> anyhow::Result<(SocketAddr, IpAddr)> {
    let mut frontends: Vec<&catalog::Frontend> = table
        .frontends
        .iter()
        .filter(|(_, r)| std::sync::Arc::ptr_eq(&r.port, &route.port) && r.scope == Scope::Internal)
        .map(|(f, _)| f)
        .collect();
    frontends.sort_by_key(|f| (catalog::is_v6(f.ip), f.ip));
    let wanted_v6 = args.client.map(catalog::is_v6);
    let Some(frontend) = frontends
        .iter()
        .find(|f| wanted_v6.is_none_or(|v6| catalog::is_v6(f.ip) == v6))
    else {
        bail!(
            "Service {} has no {} ClusterIP for --client {}; a client of that family cannot reach it",
            args.service,
            if wanted_v6 == Some(true) {
                "IPv6"
            } else {
                "IPv4"
            },
            args.client.map(|c| c.to_string()).unwrap_or_default()
        );
    };
    let frontend = SocketAddr::new(frontend.ip, frontend.port);
    let client = args
        .client
        .unwrap_or_else(|| simulate::default_client(frontend.ip()));
    Ok((frontend, client))
}

fn find_route(args: &TestArgs, table: &catalog::ServiceTable) -> anyhow::Result<Route> {
    let Some((namespace, name)) = args.service.split_once('/') else {
        bail!("--service {:?}: expected NAMESPACE/NAME", args.service);
    };
    let key = catalog::ServiceKey {
        namespace: namespace.into(),
        name: name.into(),
    };
    let Some(ports) = table.services.get(&key) else {
        let known: Vec<String> = table.services.keys().map(ToString::to_string).collect();
        bail!(
            "Service {key} is not in {} (found: {})",
            args.manifests.display(),
            known.join(", ")
        );
    };
    let port = match &args.port {
        Some(p) => ports
            .iter()
            .find(|sp| &sp.name == p)
            .with_context(|| format!("Service {key} has no port named {p:?}"))?,
        None => ports
            .first()
            .with_context(|| format!("Service {key} has no ports"))?,
    };
    Ok(Route {
        port: port.clone(),
        scope: Scope::Internal,
    })
}

fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let mut source = FileSource::new(&args.manifests);
    let scan = source.rescan()?;
    for p in &scan.problems {
        eprintln!("warning: {p}");
    }
    let manifests = source.manifests();
    let node = catalog::node_context(
        args.node_name.clone(),
        manifests.node(args.node_name.as_deref()),
    );
    let table = catalog::build(&manifests.services, &manifests.slices, &node).table;
    let route = find_route(args, &table)?;
    let (frontend, client) = find_frontend(args, &table, &route)?;
    let engine = engine()?;
    let builtin = args.file.as_os_str() == switchyard::policy::BUILTIN_ROUND_ROBIN;
    let binding = if builtin {
        None
    } else {
        let bytes = std::fs::read(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        let module = load_module(&engine, &module_name(&args.file), &bytes)
            .with_context(|| args.file.display().to_string())?;
        let config = args
            .config
            .clone()
            .or_else(|| route.port.service.policy_config.clone())
            .unwrap_or_else(|| "{}".into());
        WasmInstance::new(&engine, &module, &config)
            .with_context(|| format!("{}: configuration {config}", args.file.display()))?;
        Some(Arc::new(BoundPolicy {
            id: 1,
            service: route.port.service.key.clone(),
            module: Arc::new(module),
            config: Arc::from(config),
        }))
    };
    let sim = Simulation {
        route: &route,
        frontend,
        client,
        binding,
        connections: args.connections,
        clients: args.clients.unwrap_or(args.connections),
        failing: &args.fail,
        attempts: 3,
        hold: args.hold,
    };
    let here = Locality {
        node: args.node_name.clone(),
        zone: node.zone.clone(),
    };
    let table_binding = sim.binding.clone();
    let report = simulate::run(Some(engine.clone()), &sim, here.clone());
    println!(
        "{} connections from {client} to {} port {:?} ({frontend}):",
        args.connections, args.service, route.port.name
    );
    // Only the frontend's family: the data plane never uses the other.
    let all = route.endpoints();
    for endpoint in all[catalog::family_range(all, frontend.ip())].iter() {
        let n = report.picks.get(&endpoint.addr).copied().unwrap_or(0);
        let share = 100.0 * n as f64 / args.connections.max(1) as f64;
        let name = endpoint
            .target_name
            .as_deref()
            .or(endpoint.hostname.as_deref())
            .unwrap_or("");
        println!(
            "  {:<24} {:<20} {:>7} {:>6.1}%",
            endpoint.addr, name, n, share
        );
    }
    println!(
        "decisions: {} by the policy, {} by the previous policy, {} by the built-in round robin; {} connections found no endpoint",
        report.by_current, report.by_previous, report.by_builtin, report.failed
    );
    for line in report
        .metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_policy") && !l.starts_with('#'))
    {
        println!("  {line}");
    }
    print_slot_tables(
        &engine,
        table_binding.as_deref(),
        &route,
        frontend.ip(),
        &here,
    );
    Ok(ExitCode::SUCCESS)
}

/// The kernel datapath's view: the slot table the policy gives for the
/// port's endpoints of the frontend's family (the only family the kernel
/// path sends that frontend to), and each endpoint's share of it.
fn print_slot_tables(
    engine: &PolicyEngine,
    binding: Option<&BoundPolicy>,
    route: &Route,
    frontend: std::net::IpAddr,
    here: &Locality,
) {
    let v6 = frontend.is_ipv6();
    let endpoints: Vec<_> = route
        .endpoints()
        .iter()
        .filter(|e| e.addr.is_ipv6() == v6)
        .cloned()
        .collect();
    if endpoints.is_empty() {
        return;
    }
    let family = if v6 { "IPv6" } else { "IPv4" };
    let table = match binding {
        Some(b) => {
            switchyard::policy::table::compute(engine, &b.module, &b.config, &endpoints, here)
        }
        None => Ok(switchyard::policy::table::builtin_round_robin(endpoints.len()).map(Arc::new)),
    };
    match table {
        Ok(Some(t)) => {
            println!(
                "kernel datapath, {family}: slot table of {} slots, key {}:",
                t.slots.len(),
                t.key.name()
            );
            for (e, n) in endpoints.iter().zip(t.counts(endpoints.len())) {
                let share = 100.0 * n as f64 / t.slots.len().max(1) as f64;
                println!("  {:<24} {:>7} slots {:>6.1}%", e.addr, n, share);
            }
        }
        Ok(None) => println!(
            "kernel datapath, {family}: no slot table (no sy_table export, or it answered \"no table\"); the port runs on the proxy"
        ),
        Err(e) => println!(
            "kernel datapath, {family}: slot table refused: {e}; the port runs on the proxy"
        ),
    }
}
