//! `stepwise runs list|show`: stored runs, read from the data dir's store or from a running
//! server's HTTP API (`--server URL`, token from `STEPWISE_API_TOKEN`).

use std::process::ExitCode;

use super::text::one_line;
use anyhow::{Context, bail};
use stepwise::run::{RunId, RunResult, RunState, RunStatus};
use stepwise::store::{ListQuery, RunSummary};

use super::{RunsArgs, RunsCommand};

/// Lists or shows runs.
pub async fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    match &args.what {
        RunsCommand::List { status, limit } => {
            let status =
                status.as_deref().map(str::parse::<RunStatus>).transpose().map_err(anyhow::Error::msg)?;
            let runs = match &args.server {
                Some(url) => list_remote(url, status, *limit).await?,
                None => {
                    let store = open(&args).await?;
                    store.list(&ListQuery { status, limit: *limit, before: None }).await?
                }
            };
            if args.json {
                println!("{}", serde_json::to_string(&runs)?);
            } else {
                for r in &runs {
                    println!(
                        "{}  {:<17}  {}  {}",
                        r.id,
                        r.status.as_str(),
                        r.created_at.format("%F %T"),
                        one_line(&r.task, 70)
                    );
                }
            }
        }
        RunsCommand::Show { id } => {
            let result = match &args.server {
                Some(url) => get_remote(url, &format!("/v1/runs/{id}")).await?,
                None => {
                    let store = open(&args).await?;
                    let events = store.events(&RunId(id.clone()), 0).await?;
                    RunState::from_events(&events)?.with_context(|| format!("no run {id}"))?.result()
                }
            };
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                let currency = stepwise::config::Config::load(args.config.as_deref())?.llm.price_currency;
                print_result(&result, &currency);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn open(args: &RunsArgs) -> anyhow::Result<std::sync::Arc<dyn stepwise::store::RunStore>> {
    open_local(args.config.as_deref(), args.data_dir.as_deref()).await
}

/// Opens the store the config names (`[server] store_url`, else the data dir's SQLite file,
/// which must exist: a typo in `--data-dir` should not create an empty store).
pub(crate) async fn open_local(
    config: Option<&std::path::Path>,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<std::sync::Arc<dyn stepwise::store::RunStore>> {
    let mut cfg = stepwise::config::Config::load(config)?;
    if let Some(dir) = data_dir {
        cfg.runtime.data_dir = dir.to_path_buf();
    }
    if cfg.server.store_url.is_none() && !cfg.runtime.data_dir.join("stepwise.db").exists() {
        bail!(
            "no run store in {} (use --data-dir, or --server for a running service)",
            cfg.runtime.data_dir.display()
        );
    }
    Ok(stepwise::store::open_store(cfg.server.store_url.as_deref(), &cfg.runtime.data_dir).await?)
}

async fn get_remote<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> anyhow::Result<T> {
    let mut req = reqwest::Client::new().get(format!("{}{path}", base.trim_end_matches('/')));
    if let Ok(token) = std::env::var("STEPWISE_API_TOKEN") {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.with_context(|| format!("GET {base}{path}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        bail!("GET {path}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: unexpected body"))
}

async fn list_remote(base: &str, status: Option<RunStatus>, limit: usize) -> anyhow::Result<Vec<RunSummary>> {
    #[derive(serde::Deserialize)]
    struct Page {
        runs: Vec<RunSummary>,
    }
    let mut path = format!("/v1/runs?limit={limit}");
    if let Some(s) = status {
        path.push_str(&format!("&status={}", s.as_str()));
    }
    Ok(get_remote::<Page>(base, &path).await?.runs)
}

fn print_result(r: &RunResult, currency: &str) {
    println!("run {}  {}", r.id, r.status.as_str());
    println!("task: {}", r.task);
    println!(
        "plan revision {} ({} revisions, replanned: {})",
        r.plan.revision,
        r.revisions.len(),
        r.replanned
    );
    for s in &r.plan.steps {
        let deps = s.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ");
        println!(
            "  {:<12} {:<10} attempts {}  after [{}]  {}",
            s.id,
            format!("{:?}", s.status).to_lowercase(),
            s.attempts,
            deps,
            one_line(&s.description, 70)
        );
        if let Some(e) = &s.error {
            println!("  {:<12} error: {}", "", one_line(e, 70));
        }
    }
    for w in &r.waiting_on_provider {
        let who = match &w.step {
            Some(step) => format!("{} of step {step}", w.role),
            None => w.role.to_string(),
        };
        println!(
            "waiting on provider {} since {} ({who}): {}",
            w.provider,
            w.since.format("%Y-%m-%d %H:%M:%S UTC"),
            one_line(&w.last_error, 70)
        );
    }
    if let Some(out) = &r.final_output {
        println!("final output:\n{out}");
    }
    if let Some(e) = &r.error {
        println!("error: {e}");
    }
    println!("{}", usage_line(&r.usage, currency));
}

/// `usage: 3 LLM calls, 900 input (100 cached) + 120 output tokens, 2 tool calls, cost 0.0012 USD`;
/// the cost reads `unknown` when a model had no price.
pub(super) fn usage_line(u: &stepwise::run::Usage, currency: &str) -> String {
    let cost = match u.cost.is_known() {
        true => format!("{} {currency}", u.cost),
        false => "unknown".to_owned(),
    };
    format!(
        "usage: {} LLM calls, {} input ({} cached) + {} output tokens, {} tool calls, cost {cost}",
        u.llm_calls, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.tool_calls
    )
}
