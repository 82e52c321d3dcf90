//! `stepwise run TASK`: plan and run one task with live progress on stderr.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use futures::StreamExt;
use stepwise::RunHandle;
use stepwise::run::{EventKind, RunStatus};

use super::{RunArgs, build_runtime, load_config};

/// Runs the task; exit 0 only when the run completed.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args.model)?;
    let runtime = build_runtime(&cfg, args.model.record.as_deref(), None).await?;
    let mut options = cfg.run_options();
    if args.approve {
        options.policy.require_approval = true;
    }
    let handle = runtime.submit_with(&args.task, options).await?;
    let mut progress = super::progress::Progress::new();
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
