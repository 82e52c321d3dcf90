//! `stepwise run TASK`: plan and run one task with live progress on stderr.
//!
//! The run is recorded in the configured store (by default the SQLite file in the data dir), so
//! `stepwise runs list|show` find it afterwards. Ctrl-C cancels it (recorded as cancelled, in-flight
//! tools signalled) rather than leaving it unfinished for a later `serve` to resume.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use super::text::one_line;
use anyhow::Context;
use futures::StreamExt;
use stepwise::ControlError;
use stepwise::RunHandle;
use stepwise::run::{EventKind, PendingCall, RunStatus, ToolDecision};

use super::{Backing, RunArgs, build_runtime, load_config};

/// Runs the task; exit 0 only when the run completed.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args.model)?;
    std::fs::create_dir_all(&cfg.runtime.data_dir)
        .with_context(|| format!("creating the data dir {}", cfg.runtime.data_dir.display()))?;
    let backing = Backing::open(&cfg).await?;
    let runtime = build_runtime(&cfg, args.model.record.as_deref(), Some(backing)).await?;
    let mut options = cfg.run_options();
    if args.approve {
        options.policy.require_approval = true;
    }
    for tool in &args.approve_tools {
        if !options.policy.approve_tools.contains(tool) {
            options.policy.approve_tools.push(tool.clone());
        }
    }
    let handle = runtime.submit_with(&args.task, options).await?;
    let mut progress = super::progress::Progress::new();
    let mut events = handle.events();
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let mut interrupted = false;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = &mut interrupt, if !interrupted => {
                interrupted = true;
                // Already ended is fine: the stream then ends by itself.
                let _ = handle.cancel("interrupted (Ctrl-C)").await;
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = event?;
        progress.event(&event);
        if args.approve && matches!(event.kind, EventKind::PlanProposed { .. }) {
            ask_approval(&handle).await?;
        }
        if let EventKind::ToolApprovalRequested { step, calls, .. } = &event.kind {
            for call in calls {
                ask_tool_call(&handle, step.as_str(), call).await?;
            }
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
    eprintln!("{}", super::runs::usage_line(&result.usage, &cfg.llm.price_currency));
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

/// Asks on the terminal whether to run one tool call; anything but yes rejects it, with what
/// was typed as the reason the model sees.
async fn ask_tool_call(handle: &RunHandle, step: &str, call: &PendingCall) -> anyhow::Result<()> {
    let question = format!(
        "Step {step} wants to call {} with {}\nRun it? [y/N, or a reason to reject] ",
        call.tool,
        one_line(&call.arguments.to_string(), 500)
    );
    let answer = read_answer(question).await?;
    let decision = match answer.trim() {
        "y" | "Y" | "yes" => ToolDecision::Approve,
        "" | "n" | "N" | "no" => ToolDecision::Reject { reason: "rejected on the terminal".into() },
        reason => ToolDecision::Reject { reason: reason.to_owned() },
    };
    match handle.resolve_tool_call(&call.approval_id, decision).await {
        // Timed out or the run ended meanwhile: the events say what happened.
        Err(ControlError::Refused(refusal)) => eprintln!("not recorded: {refusal}"),
        other => other?,
    }
    Ok(())
}

/// Prints `question` on stderr and reads one line from the terminal.
async fn read_answer(question: String) -> anyhow::Result<String> {
    let answer = tokio::task::spawn_blocking(move || {
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    Ok(answer)
}

/// Asks on the terminal whether to run the proposed plan.
async fn ask_approval(handle: &RunHandle) -> anyhow::Result<()> {
    let answer = read_answer("Run this plan? [y/N] ".into()).await?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        handle.approve(None).await?;
    } else {
        handle.reject("rejected on the terminal").await?;
    }
    Ok(())
}
