//! Live progress of a run on stderr: the plan, each step's state (a spinner while it runs), and
//! counts. On a terminal it redraws in place, one line per step clipped to the terminal's width
//! (a wrapped line would break the redraw); otherwise it prints one line per event.
//!
//! While a plan awaits approval the live display is hidden: its steady redraw would otherwise
//! paint over the question asked on the same terminal (`stepwise run --approve`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use super::text::one_line;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stepwise::plan::StepSpec;
use stepwise::run::{EventKind, RunEvent};

/// Renders events as they arrive.
pub struct Progress {
    multi: MultiProgress,
    header: ProgressBar,
    bars: HashMap<String, ProgressBar>,
    tty: bool,
    done: usize,
    total: usize,
    failed: usize,
    /// The run waits for a person before any step runs (`require_approval`).
    needs_approval: bool,
}

impl Progress {
    /// A renderer on stderr.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        header.enable_steady_tick(Duration::from_millis(120));
        header.set_message("planning…");
        Self { multi, header, bars: HashMap::new(), tty, done: 0, total: 0, failed: 0, needs_approval: false }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    fn counts(&self) {
        self.header.set_message(format!("steps: {}/{} done, {} failed", self.done, self.total, self.failed));
    }

    fn add_steps(&mut self, steps: &[StepSpec]) {
        // A streamed plan shows its steps as they arrive; the whole plan adds only the rest.
        // Ids are padded to the longest of this batch so the states line up.
        let width = steps.iter().map(|s| s.id.as_str().chars().count()).max().unwrap_or(0).clamp(2, 16);
        for s in steps {
            if self.bars.contains_key(s.id.as_str()) {
                continue;
            }
            self.total += 1;
            let deps = s.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ");
            self.line(format!(
                "  {} {}{}",
                s.id,
                s.description,
                if deps.is_empty() { String::new() } else { format!("  (after {deps})") }
            ));
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(&format!("  {{prefix:<{width}}} {{spinner}} {{wide_msg}}"))
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(s.id.to_string());
            bar.set_message("pending");
            self.bars.insert(s.id.to_string(), bar);
        }
        self.counts();
    }

    fn step(&mut self, id: &str, msg: String, finished: bool) {
        if let Some(bar) = self.bars.get(id) {
            if finished {
                bar.finish_with_message(msg.clone());
            } else {
                bar.enable_steady_tick(Duration::from_millis(120));
                bar.set_message(msg.clone());
            }
        }
        if !self.tty {
            eprintln!("  [{id}] {msg}");
        }
    }

    /// Shows one event.
    pub fn event(&mut self, e: &RunEvent) {
        match &e.kind {
            EventKind::RunSubmitted { task, options } => {
                self.needs_approval = options.policy.require_approval;
                self.line(format!("task: {task}"));
            }
            EventKind::PlanStreamed { steps } => {
                if self.bars.is_empty() {
                    self.line("plan (streaming)".into());
                }
                self.add_steps(steps);
            }
            EventKind::PlanProposed { plan, revision, cached_from, .. } => {
                let cached = cached_from.as_ref().map(|r| format!(" [cached plan of run {r}]"));
                self.line(format!("plan (revision {revision}): {}{}", plan.goal, cached.unwrap_or_default()));
                self.add_steps(&plan.steps);
                if self.needs_approval && self.tty {
                    // Nothing changes until the answer; the question must stay readable.
                    self.multi.set_draw_target(ProgressDrawTarget::hidden());
                }
            }
            EventKind::PlanApproved { edited } => {
                if self.needs_approval && self.tty {
                    self.multi.set_draw_target(ProgressDrawTarget::stderr());
                }
                self.line(if edited.is_some() {
                    "plan approved (edited)".into()
                } else {
                    "plan approved".into()
                })
            }
            EventKind::StepStarted { step, attempt } => {
                let msg =
                    if *attempt > 1 { format!("running (attempt {attempt})") } else { "running".into() };
                self.step(step.as_str(), msg, false)
            }
            EventKind::ToolCalled { step, tool, .. } => {
                self.step(step.as_str(), format!("calling {tool}"), false)
            }
            EventKind::ToolReturned { .. } => {}
            EventKind::ToolApprovalRequested { step, calls, .. } => {
                let tools: Vec<&str> = calls.iter().map(|c| c.tool.as_str()).collect();
                self.step(step.as_str(), format!("waiting for approval of {}", tools.join(", ")), false)
            }
            EventKind::ToolApprovalResolved { step, decision, .. } => {
                self.step(step.as_str(), format!("tool call {}", decision.outcome()), false)
            }
            EventKind::StepCompleted { step, output, .. } => {
                self.done += 1;
                self.step(step.as_str(), format!("✓ {}", one_line(output, 80)), true);
                self.counts();
            }
            EventKind::StepFailed { step, error, .. } => {
                self.failed += 1;
                self.step(step.as_str(), format!("✗ {error}"), false);
                self.counts();
            }
            EventKind::StepSkipped { step, reason } => {
                self.done += 1;
                self.step(step.as_str(), format!("skipped: {}", one_line(reason, 80)), true);
                self.counts();
            }
            EventKind::ReplanConsidered { reason, .. } => {
                self.line(format!("replanner: continue ({reason})"))
            }
            EventKind::Replanned { revision, reason, steps, .. } => {
                self.line(format!("replanned (revision {revision}): {reason}"));
                // Steps that were not completed are replaced.
                for (_, bar) in self.bars.drain() {
                    if !bar.is_finished() {
                        bar.finish_with_message("replaced");
                        self.total -= 1;
                    }
                }
                self.add_steps(steps);
            }
            EventKind::RunCompleted { .. } => self.header.finish_with_message("completed"),
            EventKind::RunFailed { error, .. } => self.header.finish_with_message(format!("failed: {error}")),
            EventKind::RunCancelled { reason } => {
                self.header.finish_with_message(format!("cancelled: {reason}"))
            }
            EventKind::ProviderWaiting { role, step, provider, last_error, .. } => {
                let msg = format!("waiting for {provider} ({})", one_line(last_error, 60));
                match step {
                    Some(step) => self.step(step.as_str(), msg, false),
                    None => self.line(format!("{role}: {msg}")),
                }
            }
            EventKind::ProviderResumed { role, step, waited_ms, .. } => {
                let msg = format!("provider back after {:.1} s", *waited_ms as f64 / 1000.0);
                match step {
                    Some(step) => self.step(step.as_str(), msg, false),
                    None => self.line(format!("{role}: {msg}")),
                }
            }
        }
    }
}
