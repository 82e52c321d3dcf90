//! The `stepwise` binary: see `stepwise --help` and the README.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use stepwise::config::Config;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs (stderr, `RUST_LOG`, default warn) and OTLP export; inside the runtime because the gRPC
    // exporter runs on it. The guard flushes every span when dropped, before the runtime is.
    let telemetry = {
        let _rt = rt.enter();
        match stepwise::telemetry::init(&telemetry_config(&cli)) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(telemetry);
    code
}

/// The `[telemetry]` section of the command's config file (defaults if it cannot be read: the
/// command itself reports that error).
fn telemetry_config(cli: &Cli) -> stepwise::config::TelemetryConfig {
    let path = match &cli.command {
        Command::Run(args) => args.model.config.as_deref(),
        Command::Serve(args) => args.model.config.as_deref(),
        Command::Mcp(args) => args.model.config.as_deref(),
        Command::Runs(args) => args.config.as_deref(),
        Command::Cache(args) => args.config.as_deref(),
        Command::Bench(_) => None,
    };
    let mut telemetry = Config::load(path).map(|c| c.telemetry).unwrap_or_default();
    if let Some(format) = cli.log_format {
        telemetry.log_format = format;
    }
    telemetry
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => cli::run::run(args).await,
        Command::Serve(args) => cli::serve::serve(args).await,
        Command::Mcp(args) => cli::mcp::mcp(args).await,
        Command::Runs(args) => cli::runs::runs(args).await,
        Command::Cache(args) => cli::cache::cache(args).await,
        Command::Bench(args) => {
            let report = cli::bench::run(&args).await?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
