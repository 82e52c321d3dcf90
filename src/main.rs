//! The `stepwise` binary: see `stepwise --help` and DESIGN §6.

mod cli;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use stepwise::config::Config;
use stepwise::llm::config::ProviderKind;
use stepwise::run::{EventKind, RunStatus};
use stepwise::{RunHandle, Runtime, Stepwise};

use cli::{Cli, Command, ModelArgs, ProviderArg, RunArgs};

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
        _ => None,
    };
    Config::load(path).map(|c| c.telemetry).unwrap_or_default()
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Bench(args) => {
            let report = match args.scenario {
                cli::BenchScenario::Overhead => {
                    cli::bench::overhead(args.runs, args.steps, args.pool).await?
                }
                cli::BenchScenario::Makespan => {
                    cli::bench::makespan(args.depth, args.width, args.latency_ms, args.pool).await?
                }
                cli::BenchScenario::Concurrency => {
                    cli::bench::concurrency(args.runs, args.latency_ms, args.pool).await?
                }
                cli::BenchScenario::Tracing => {
                    cli::bench::tracing(args.runs, args.steps, args.pool, args.reps).await?
                }
            };
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the config and applies the model flags on top of it.
fn load_config(args: &ModelArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(script) = &args.script {
        cfg.llm.script = Some(script.clone());
        if args.provider.is_none() {
            cfg.llm.provider = ProviderKind::Scripted;
        }
    }
    if let Some(p) = args.provider {
        cfg.llm.provider = match p {
            ProviderArg::Openai => ProviderKind::Openai,
            ProviderArg::Anthropic => ProviderKind::Anthropic,
            ProviderArg::Scripted => ProviderKind::Scripted,
        };
    }
    if let Some(m) = &args.model {
        cfg.llm.model = m.clone();
    }
    Ok(cfg)
}

/// Builds a runtime from the config, recording model exchanges to `record` when given.
async fn build_runtime(cfg: &Config, record: Option<&std::path::Path>) -> anyhow::Result<Runtime> {
    let mut models = stepwise::llm::providers::build_models(&cfg.llm, &stepwise::llm::providers::process_env)
        .context("building the models")?;
    if let Some(path) = record {
        models = stepwise::llm::record::RecordingModel::wrap_models(&models, path)
            .with_context(|| format!("recording to {}", path.display()))?;
    }
    let runtime = Stepwise::builder()
        .models(models)
        .tools(stepwise::tools::builtin_registry(&cfg.tools))
        .options(cfg.run_options())
        .executor_pool_size(cfg.runtime.executor_pool_size)
        .llm_concurrency(cfg.runtime.llm_concurrency)
        .workspace_root(cfg.workspace_root())
        .prompts(cfg.prompts()?)
        .record_content(stepwise::telemetry::ContentCapture::from_config(&cfg.telemetry))
        .build()
        .await?;
    Ok(runtime)
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args.model)?;
    let runtime = build_runtime(&cfg, args.model.record.as_deref()).await?;
    let mut options = cfg.run_options();
    if args.approve {
        options.policy.require_approval = true;
    }
    let handle = runtime.submit_with(&args.task, options).await?;
    let mut progress = cli::progress::Progress::new();
    let mut events = handle.events();
    while let Some(event) = events.next().await {
        let event = event?;
        progress.event(&event);
        if args.approve && matches!(event.kind, EventKind::PlanProposed { .. }) {
            ask_approval(&handle).await?;
        }
    }
    let result = handle.result().await?;
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &result)?;
        writeln!(out)?;
    } else if let Some(answer) = &result.final_output {
        println!("{answer}");
    }
    if result.status != RunStatus::Completed {
        eprintln!("run {} {}: {}", result.id, result.status.as_str(), result.error.as_deref().unwrap_or(""));
    }
    let workspace = cfg.workspace_root().join(result.id.as_str());
    if workspace.exists() {
        eprintln!("workspace: {}", workspace.display());
    }
    runtime.shutdown().await;
    Ok(if result.status == RunStatus::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Asks on the terminal whether to run the proposed plan.
async fn ask_approval(handle: &RunHandle) -> anyhow::Result<()> {
    let answer = tokio::task::spawn_blocking(|| {
        eprint!("Run this plan? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        handle.approve(None).await?;
    } else {
        handle.reject("rejected on the terminal").await?;
    }
    Ok(())
}
