//! The `switchyard` command: `run` the proxy, `check` config and manifests.

mod cli;
mod policy_cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => cli::check(&args),
        Command::Policy { command } => policy_cli::run(&command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.config().context("loading the configuration")?;
    cli::init_logging(&config.log).context("setting up logging")?;
    let node_name = cli::node_name(&config);
    let path = args.config.clone();
    let loader: switchyard::daemon::Loader = std::sync::Arc::new(move || args.config());
    switchyard::daemon::run(config, node_name, path, loader)?;
    Ok(ExitCode::SUCCESS)
}
