//! Command-line interface (DESIGN §6): `stepwise run TASK`, with the model flags shared by every
//! command that runs tasks.

pub mod bench;
pub mod progress;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// stepwise: a Plan & Execute agent runtime.
#[derive(Debug, Parser)]
#[command(name = "stepwise", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan and run one task, showing progress on stderr.
    Run(RunArgs),
    /// Measure the runtime: prints one JSON object per scenario.
    Bench(BenchArgs),
}

/// `stepwise bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which scenario.
    #[arg(value_enum, default_value = "overhead")]
    pub scenario: BenchScenario,
    /// Concurrent runs.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Steps per run (independent of each other).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Executors in the pool.
    #[arg(long, default_value_t = 8)]
    pub pool: usize,
    /// Simulated latency of every model call, in ms (makespan, concurrency).
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// Layers of the makespan plan.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Independent steps per layer of the makespan plan.
    #[arg(long, default_value_t = 4)]
    pub width: usize,
    /// Repetitions of each variant (scenario `tracing`).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

/// Benchmark scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchScenario {
    /// Orchestration cost per step with a zero-latency model.
    Overhead,
    /// A layered plan at a fixed model latency, against its critical path.
    Makespan,
    /// Many concurrent runs at a fixed model latency: throughput and memory.
    Concurrency,
    /// Wall-time ratio of the `overhead` workload with OTLP export on versus off.
    Tracing,
}

/// Model and config flags shared by the commands that run tasks.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Config file (default: config/stepwise.toml when present, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Model provider for every role (overrides `[llm] provider`).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// Model name (overrides `[llm] model`).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Script for the scripted provider; implies `--provider scripted` unless one is given.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Save every model exchange of the run to FILE, as a script `--script` can replay.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

/// `--provider` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    /// OpenAI-compatible Chat Completions.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Offline, deterministic script.
    Scripted,
}

/// `stepwise run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task.
    pub task: String,
    /// Print the RunResult as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Show the plan and ask on the terminal before any step runs.
    #[arg(long)]
    pub approve: bool,
    /// Shared model flags.
    #[command(flatten)]
    pub model: ModelArgs,
}
