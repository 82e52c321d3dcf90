//! `stepwise cache list|clear`: the plan cache kept in the run store.

use std::process::ExitCode;

use super::text::one_line;
use anyhow::Context;
use stepwise::store::plan_cache::PlanCacheEntry;

use super::{CacheArgs, CacheCommand};

/// Lists or clears the plan cache.
pub async fn cache(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let store = super::runs::open_local(args.config.as_deref(), args.data_dir.as_deref()).await?;
    let cache = store.plan_cache().context("this run store keeps no plan cache")?;
    match args.what {
        CacheCommand::List => {
            let entries = cache.entries().await?;
            if args.json {
                println!("{}", serde_json::to_string(&entries)?);
            } else {
                let now = chrono::Utc::now();
                for e in &entries {
                    println!("{}", line(e, now));
                }
            }
        }
        CacheCommand::Clear => {
            let n = cache.clear().await?;
            if args.json {
                println!("{}", serde_json::json!({ "cleared": n }));
            } else {
                println!("cleared {n} cached plan{}", if n == 1 { "" } else { "s" });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One entry as a table row: short key and component digests, age, steps, source, model, task.
fn line(e: &PlanCacheEntry, now: chrono::DateTime<chrono::Utc>) -> String {
    let k = &e.key;
    let short = |d: &str| d.chars().take(8).collect::<String>();
    format!(
        "{}  task:{} tools:{} model:{} prompt:{}  {:>6}s  {} steps  from {}  {}  {}",
        short(&k.key),
        short(&k.task_digest),
        short(&k.tools_digest),
        short(&k.model_digest),
        short(&k.prompt_digest),
        now.signed_duration_since(e.created_at).num_seconds(),
        e.plan.steps.len(),
        e.source_run,
        k.model,
        one_line(&e.task, 60)
    )
}
