//! Command-line interface: `stepwise run TASK`, with the model flags shared by every
//! command that runs tasks.

pub mod bench;
pub mod cache;
pub mod mcp;
pub mod progress;
pub mod run;
pub mod runs;
pub mod serve;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use stepwise::config::Config;
use stepwise::llm::config::ProviderKind;
use stepwise::store::RunStore;
use stepwise::{Runtime, Stepwise};

/// stepwise: a Plan & Execute agent runtime.
#[derive(Debug, Parser)]
#[command(name = "stepwise", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr as `text` (coloured only on a terminal) or `json` (one object a line,
    /// for services); overrides `[telemetry] log_format`.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<stepwise::config::LogFormat>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan and run one task, showing progress on stderr.
    Run(RunArgs),
    /// Run the HTTP service; resumes unfinished runs from the store on start.
    Serve(ServeArgs),
    /// List or show stored runs, from the data dir or a running server.
    Runs(RunsArgs),
    /// Measure the runtime: prints one JSON object per scenario.
    Bench(BenchArgs),
    /// Serve stepwise as an MCP server over stdio (start runs, follow and steer them).
    Mcp(McpArgs),
    /// List or clear the plan cache (`[plan_cache]`) of the data dir's or configured store.
    Cache(CacheArgs),
}

/// `stepwise cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub what: CacheCommand,
    /// Config file (for the data dir and store URL).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory whose store to use (overrides `[runtime] data_dir`).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `stepwise cache …` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Cached plans, newest first: key, age, steps, source run, planner model, task.
    List,
    /// Drops every cached plan.
    Clear,
}

/// `stepwise mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Data directory: the SQLite store and the run workspaces (overrides `[runtime] data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shared model flags.
    #[command(flatten)]
    pub model: ModelArgs,
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
    /// Steps per run, independent of each other (default: 10; 2 for serve and replicas).
    #[arg(long)]
    pub steps: Option<usize>,
    /// A fixed pool of this many executors (default: the runtime's default bounds, 4 to 512
    /// workers, growing with the steps ready to run).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Simulated latency of every model call, in ms (default: 50 for makespan, concurrency, http
    /// and the fake server serve starts; 200 for replicas; 0 for tracing). With `--provider openai` or
    /// `--model-url`, the server's latency as you know it (for the reports; required by makespan,
    /// whose bound depends on it).
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// Layers of the makespan plan.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Independent steps per layer of the makespan plan.
    #[arg(long, default_value_t = 4)]
    pub width: usize,
    /// Repetitions of each variant (scenario `tracing`).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Event store of the runtime under test.
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreArg,
    /// Seconds of submit + GET load (scenario `http`).
    #[arg(long, default_value_t = 10)]
    pub load_secs: u64,
    /// Stream each run's plan and start steps as they arrive (`policy.stream_plan`); not for
    /// `tracing`.
    #[arg(long)]
    pub stream_plan: bool,
    /// Scenario `makespan`: also run the task twice on one runtime with the plan cache on, and
    /// report the first run (a miss), the second (a hit: no planner call), the gain, and the
    /// hit's cost (the store lookup).
    #[arg(long)]
    pub plan_cache: bool,
    /// Scenario `serve`: the fake model server's binary, which the bench starts at `--latency-ms`
    /// (default: `examples/fake_openai_server` beside this executable).
    #[arg(long, value_name = "PATH")]
    pub fake_server: Option<PathBuf>,
    /// Scenario `serve`: the base URL of an OpenAI-compatible server already running (e.g.
    /// `http://127.0.0.1:8089/v1`), instead of starting the fake one. Its tasks end in `steps=K`.
    #[arg(long, value_name = "URL", conflicts_with = "fake_server")]
    pub model_url: Option<String>,
    /// Scenario `serve`: the stepwise binary to run as `serve` (default: this executable), so two
    /// builds can be compared with the same client.
    #[arg(long, value_name = "PATH")]
    pub serve_exe: Option<PathBuf>,
    /// Scenario `replicas` (required there): the Postgres database the replicas share,
    /// `postgres://…`; each replica count gets a fresh schema in it, dropped afterwards.
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
    /// Scenario `replicas`: the replica counts to measure, comma-separated.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_value = "1,2,3")]
    pub replicas: Vec<usize>,
    /// Scenario `replicas`: `[executors] max_workers` of every replica.
    #[arg(long, default_value_t = 8)]
    pub max_workers: usize,
    /// Scenario `replicas`: `[cluster] lease_ttl_secs` of every replica (a killed replica's runs
    /// are taken over this long after its last heartbeat).
    #[arg(long, default_value_t = 5)]
    pub lease_ttl_secs: u64,
    /// Model flags: `--provider openai` (with `OPENAI_BASE_URL`) drives the scenarios with an
    /// external OpenAI-compatible server instead of the scripted model.
    #[command(flatten)]
    pub model: ModelArgs,
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
    /// The concurrency scenario through the HTTP API, a timed load, memory per idle run.
    Http,
    /// The real `stepwise serve` binary with its default config against the fake model server:
    /// throughput, the service's CPU per step and per model call, its peak RSS.
    Serve,
    /// Several `serve` replicas sharing one Postgres (`--store-url`): throughput per replica
    /// count, then the takeover time after one replica is killed.
    Replicas,
}

/// `--store` values of `stepwise bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    /// Events in memory.
    Memory,
    /// A SQLite file (WAL) in a temp dir, as `stepwise serve` uses by default.
    Sqlite,
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
    /// Show the plan and ask on the terminal before any step runs. Calls of the tools that
    /// need approval (`[policy] approve_tools`, `--approve-tool`) are asked about one by one
    /// as they come, with or without this flag.
    #[arg(long)]
    pub approve: bool,
    /// Ask on the terminal before each call of this tool (repeatable; adds to
    /// `[policy] approve_tools`).
    #[arg(long = "approve-tool", value_name = "TOOL")]
    pub approve_tools: Vec<String>,
    /// Shared model flags.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `stepwise serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides `[server] bind`; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Data directory: the SQLite store and the run workspaces (overrides `[runtime] data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shared model flags.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `stepwise runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// What to show.
    #[command(subcommand)]
    pub what: RunsCommand,
    /// Config file (for the data dir and store URL).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory to read (overrides `[runtime] data_dir`).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Ask a running server instead (e.g. http://127.0.0.1:8080); its token comes from
    /// `STEPWISE_API_TOKEN`.
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `stepwise runs …` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        /// Only runs in this status (planning, awaiting_approval, running, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One run's result: plan, steps, output, usage.
    Show {
        /// Run id.
        id: String,
    },
}

/// Loads the config and applies the model flags on top of it.
pub fn load_config(args: &ModelArgs) -> anyhow::Result<Config> {
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

/// The runtime of a long-lived process (`serve`, `mcp`): its data dir created, the configured
/// store (SQLite in the data dir, or `[server] store_url`) opened. Unfinished runs are not resumed
/// yet: the caller does that when it is ready to serve them.
pub async fn durable_runtime(cfg: &Config, record: Option<&Path>) -> anyhow::Result<Arc<stepwise::Runtime>> {
    use anyhow::Context;
    std::fs::create_dir_all(&cfg.runtime.data_dir)
        .with_context(|| format!("creating the data dir {}", cfg.runtime.data_dir.display()))?;
    let backing = Backing::open(cfg).await?;
    Ok(Arc::new(build_runtime(cfg, record, Some(backing)).await?))
}

/// What a runtime of this process keeps its runs in: a store of its own, or the Postgres store
/// it shares with other replicas (then it takes part in leases and the step queue).
pub enum Backing {
    /// SQLite, memory, or Postgres in a build without replica support.
    Store(Arc<dyn RunStore>),
    /// One replica of several on a Postgres store.
    #[cfg(feature = "postgres")]
    Replica(stepwise::cluster::Replica),
}

impl Backing {
    /// Opens the configured store (`[server] store_url`, else SQLite in the data dir); a
    /// Postgres one makes this process a replica (`[cluster]`).
    pub async fn open(cfg: &Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        #[cfg(feature = "postgres")]
        if let Some(url) = cfg.server.store_url.as_deref().filter(|u| stepwise::store::is_postgres_url(u)) {
            let replica = stepwise::cluster::Replica::connect(url, &cfg.cluster)
                .await
                .context("opening the run store")?;
            return Ok(Backing::Replica(replica));
        }
        let store = stepwise::store::open_store(cfg.server.store_url.as_deref(), &cfg.runtime.data_dir)
            .await
            .context("opening the run store")?;
        Ok(Backing::Store(store))
    }

    fn apply(self, builder: stepwise::RuntimeBuilder) -> stepwise::RuntimeBuilder {
        match self {
            Backing::Store(store) => builder.store(store),
            #[cfg(feature = "postgres")]
            Backing::Replica(replica) => builder.replica(replica),
        }
    }
}

/// Builds a runtime from the config, recording model exchanges to `record` when given, on
/// `backing` (default: in memory).
pub async fn build_runtime(
    cfg: &Config,
    record: Option<&Path>,
    backing: Option<Backing>,
) -> anyhow::Result<Runtime> {
    let mut models = stepwise::llm::providers::build_models(&cfg.llm, &stepwise::llm::providers::process_env)
        .context("building the models")?;
    if let Some(path) = record {
        models = stepwise::llm::record::RecordingModel::wrap_models(&models, path)
            .with_context(|| format!("recording to {}", path.display()))?;
    }
    let mut builder = Stepwise::builder();
    if let Some(backing) = backing {
        builder = backing.apply(builder);
    }
    let mut tools = stepwise::tools::builtin_registry(&cfg.tools);
    // MCP servers come up before the runtime: a required one that does not is an error here.
    stepwise::tools::mcp::McpServers::start(&cfg.tools.mcp).await?.register(&mut tools);
    let runtime = builder
        .models(models)
        .tools(tools)
        .options(cfg.run_options())
        .executors(cfg.executors.min_workers, cfg.executors.max_workers)
        .executor_shrink_after(std::time::Duration::from_secs(cfg.executors.shrink_after_idle_secs))
        .llm_concurrency(cfg.runtime.llm_concurrency)
        .workspace_root(cfg.workspace_root())
        .prompts(cfg.prompts()?)
        .record_content(stepwise::telemetry::ContentCapture::from_config(&cfg.telemetry))
        .prices(cfg.llm.price_table().context("the price table ([[llm.prices]])")?)
        .plan_cache(cfg.plan_cache.bounds())
        .build()
        .await?;
    Ok(runtime)
}
