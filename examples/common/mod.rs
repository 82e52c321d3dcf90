//! Helpers shared by the examples: follow a run's events and print what happened.
//!
//! Not an example itself (Cargo only picks up `examples/*.rs` and `examples/*/main.rs`); each
//! example includes it with `mod common;`.

use std::fmt::Write as _;

use futures::StreamExt;
use stepwise::Runtime;
use stepwise::run::{EventKind, RunEvent, RunResult};

/// Submits `task`, hands every event to `on_event` as it happens, and returns the result with
/// the whole event log (examples print the events; tests look at their order and timestamps).
pub async fn drive(
    runtime: &Runtime,
    task: &str,
    mut on_event: impl FnMut(&RunEvent),
) -> Result<(RunResult, Vec<RunEvent>), stepwise::RuntimeError> {
    let handle = runtime.submit(task).await?;
    let mut stream = handle.events();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event?;
        on_event(&event);
        events.push(event);
    }
    Ok((handle.result().await?, events))
}

/// One line per interesting event, for live progress.
pub fn print_event(event: &RunEvent) {
    let line = match &event.kind {
        EventKind::RunSubmitted { task, .. } => format!("submitted: {task}"),
        EventKind::PlanStreamed { steps } => {
            let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
            format!("plan streaming: {}", ids.join(", "))
        }
        EventKind::PlanProposed { plan, .. } => {
            let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
            format!("plan r1: {} steps ({})", ids.len(), ids.join(", "))
        }
        EventKind::PlanApproved { .. } => "plan approved".to_owned(),
        EventKind::StepStarted { step, attempt } => format!("> {step} started (attempt {attempt})"),
        EventKind::ToolCalled { step, tool, arguments, .. } => {
            format!("    {step}: {tool} {}", short(&arguments.to_string(), 90))
        }
        EventKind::ToolReturned { step, ok, output, .. } => {
            format!("    {step}: {} {}", if *ok { "<- ok:" } else { "<- FAILED:" }, short(output, 90))
        }
        EventKind::ToolApprovalRequested { step, calls, .. } => {
            let tools: Vec<&str> = calls.iter().map(|c| c.tool.as_str()).collect();
            format!("? {step} waits for approval of {}", tools.join(", "))
        }
        EventKind::ToolApprovalResolved { step, decision, .. } => {
            format!("? {step}: tool call {}", decision.outcome())
        }
        EventKind::StepCompleted { step, output, .. } => format!("+ {step} completed: {}", short(output, 90)),
        EventKind::StepFailed { step, error, .. } => {
            format!("x {step} failed: {}", short(&error.to_string(), 110))
        }
        EventKind::StepSkipped { step, reason } => format!("- {step} skipped: {reason}"),
        EventKind::ReplanConsidered { reason, .. } => format!("~ replanner kept the plan: {reason}"),
        EventKind::Replanned { revision, reason, steps, caused_by, .. } => {
            let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
            let cause = caused_by.as_ref().map(|s| format!(" after {s} failed")).unwrap_or_default();
            format!("~ plan r{revision}{cause}: {reason}\n  new steps: {}", ids.join(", "))
        }
        EventKind::RunCompleted { .. } => "run completed".to_owned(),
        EventKind::RunFailed { error, .. } => format!("run FAILED: {error}"),
        EventKind::RunCancelled { reason } => format!("run cancelled: {reason}"),
        EventKind::ProviderWaiting { role, provider, last_error, .. } => {
            format!("… {role} waits for {provider}: {}", short(last_error, 90))
        }
        EventKind::ProviderResumed { role, waited_ms, .. } => {
            format!("… {role} resumed after {waited_ms} ms")
        }
    };
    println!("[{:>3}] {line}", event.seq);
}

/// The run's outcome: plan with each step's status and output, final output or error, usage.
pub fn print_summary(result: &RunResult) {
    let mut out = String::new();
    let _ = writeln!(out, "\n== {} (run {})", result.status.as_str(), result.id);
    let _ = writeln!(out, "plan revision {}: {}", result.plan.revision, result.plan.goal);
    for step in &result.plan.steps {
        let deps: Vec<&str> = step.depends_on.iter().map(|d| d.as_str()).collect();
        let _ = writeln!(
            out,
            "  {:<14} {:<10} attempts {}  depends on: {}",
            step.id.as_str(),
            format!("{:?}", step.status).to_lowercase(),
            step.attempts,
            if deps.is_empty() { "-".to_owned() } else { deps.join(", ") }
        );
        if let Some(output) = &step.output {
            let _ = writeln!(out, "{}", indent(output, "      | "));
        }
        if let Some(error) = &step.error {
            let _ = writeln!(out, "      ! {error}");
        }
    }
    if let Some(final_output) = &result.final_output {
        let _ = writeln!(out, "final output:\n{}", indent(final_output, "  "));
    }
    if let Some(error) = &result.error {
        let _ = writeln!(out, "error: {error}");
    }
    let u = &result.usage;
    let took = result
        .finished_at
        .map(|end| format!("; took {} ms", (end - result.created_at).num_milliseconds()))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "usage: {} LLM calls, {} tokens ({} in / {} out), {} tool calls{took}",
        u.llm_calls,
        u.tokens(),
        u.input_tokens,
        u.output_tokens,
        u.tool_calls
    );
    print!("{out}");
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}").trim_end().to_owned()).collect::<Vec<_>>().join("\n")
}

/// The first line of `s`, cut to `max` characters.
fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let more = s.lines().nth(1).is_some();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else if more {
        format!("{line} …")
    } else {
        line.to_owned()
    }
}
