//! Unit tests of the fold and the policy.

use super::*;
use chrono::Utc;

use crate::options::{FailurePolicy, Policy, ReplanMode, RunOptions};
use crate::plan::{PlanSpec, StepId, StepSpec, StepStatus};

fn spec(ids: &[(&str, &[&str])]) -> PlanSpec {
    PlanSpec {
        goal: "g".into(),
        steps: ids
            .iter()
            .map(|(id, deps)| StepSpec {
                id: (*id).into(),
                description: format!("do {id}"),
                expected_outcome: String::new(),
                tool: None,
                depends_on: deps.iter().map(|d| StepId::from(*d)).collect(),
            })
            .collect(),
    }
}

struct Log {
    id: RunId,
    events: Vec<RunEvent>,
}

impl Log {
    fn new(options: RunOptions) -> Self {
        let mut l = Log { id: RunId::new(), events: vec![] };
        l.push(EventKind::RunSubmitted { task: "t".into(), options });
        l
    }
    fn push(&mut self, kind: EventKind) -> &mut Self {
        let seq = self.events.len() as u64 + 1;
        self.events.push(RunEvent { run_id: self.id.clone(), seq, at: Utc::now(), kind });
        self
    }
    fn state(&self) -> RunState {
        RunState::from_events(&self.events).unwrap().unwrap()
    }
}

fn usage(calls: u64, tokens: u64) -> Usage {
    Usage { llm_calls: calls, input_tokens: tokens, output_tokens: tokens, ..Usage::default() }
}

#[test]
fn fold_of_a_happy_run() {
    let mut l = Log::new(RunOptions::default());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[]), ("b", &["a"])]),
        usage: usage(1, 10),
        cached_from: None,
    })
    .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
    .push(EventKind::ToolCalled {
        step: "a".into(),
        attempt: 1,
        call_id: "c1".into(),
        tool: "t".into(),
        arguments: serde_json::json!({}),
    })
    .push(EventKind::ToolReturned {
        step: "a".into(),
        attempt: 1,
        call_id: "c1".into(),
        ok: true,
        output: "x".into(),
    })
    .push(EventKind::StepCompleted {
        step: "a".into(),
        attempt: 1,
        output: "A".into(),
        usage: usage(2, 5),
    });
    let s = l.state();
    assert_eq!(s.status, RunStatus::Running);
    assert_eq!(s.plan.ready().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["b"]);
    l.push(EventKind::StepStarted { step: "b".into(), attempt: 1 })
        .push(EventKind::StepCompleted {
            step: "b".into(),
            attempt: 1,
            output: "B".into(),
            usage: usage(1, 1),
        })
        .push(EventKind::RunCompleted { final_output: "done".into(), usage: usage(1, 2) });
    let r = l.state().result();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.final_output.as_deref(), Some("done"));
    assert!(!r.replanned);
    assert_eq!(
        r.usage,
        Usage { llm_calls: 5, input_tokens: 18, output_tokens: 18, tool_calls: 1, ..Usage::default() }
    );
    assert!(r.finished_at.is_some());
    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "id",
        "task",
        "status",
        "plan",
        "revisions",
        "replanned",
        "final_output",
        "error",
        "usage",
        "created_at",
        "finished_at",
    ] {
        assert!(json.get(key).is_some(), "RunResult JSON lacks {key}");
    }
    for key in [
        "id",
        "description",
        "expected_outcome",
        "tool",
        "depends_on",
        "status",
        "attempts",
        "output",
        "error",
    ] {
        assert!(json["plan"]["steps"][0].get(key).is_some(), "step JSON lacks {key}");
    }
    assert_eq!(json["status"], "completed");
}

#[test]
fn events_round_trip_through_json_with_a_type_tag() {
    let mut l = Log::new(RunOptions::default());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    });
    let text = serde_json::to_string(&l.events).unwrap();
    assert!(text.contains(r#""type":"PlanProposed""#), "{text}");
    let back: Vec<RunEvent> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, l.events);
}

#[test]
fn seq_gaps_and_foreign_events_are_rejected() {
    let mut l = Log::new(RunOptions::default());
    let mut s = l.state();
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    });
    let mut gap = l.events[1].clone();
    gap.seq = 5;
    assert!(matches!(s.apply(&gap), Err(StateError::Sequence { expected: 2, got: 5, .. })));
    let mut foreign = l.events[1].clone();
    foreign.run_id = RunId::new();
    assert!(matches!(s.apply(&foreign), Err(StateError::WrongRun { .. })));
}

#[test]
fn impossible_transitions_are_rejected() {
    let mut l = Log::new(RunOptions::default());
    l.push(EventKind::StepStarted { step: "a".into(), attempt: 1 });
    assert!(RunState::from_events(&l.events).is_err(), "a step cannot start before a plan");
    let mut l = Log::new(RunOptions::default());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    })
    .push(EventKind::StepCompleted {
        step: "a".into(),
        attempt: 1,
        output: "x".into(),
        usage: usage(0, 0),
    });
    let err = RunState::from_events(&l.events).unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");
}

#[test]
fn approval_holds_the_plan_and_an_edit_replaces_it() {
    let mut opts = RunOptions::default();
    opts.policy.require_approval = true;
    let mut l = Log::new(opts);
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    });
    assert_eq!(l.state().status, RunStatus::AwaitingApproval);
    l.push(EventKind::PlanApproved { edited: Some(spec(&[("x", &[]), ("y", &["x"])])) });
    let s = l.state();
    assert_eq!(s.status, RunStatus::Running);
    assert_eq!(s.plan.steps.len(), 2);
    assert_eq!(s.plan.steps[0].id.as_str(), "x");
}

#[test]
fn replan_keeps_completed_steps_and_bumps_the_revision() {
    let mut l = Log::new(RunOptions::default());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[]), ("b", &["a"])]),
        usage: usage(1, 1),
        cached_from: None,
    })
    .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
    .push(EventKind::StepCompleted { step: "a".into(), attempt: 1, output: "A".into(), usage: usage(1, 1) })
    .push(EventKind::StepStarted { step: "b".into(), attempt: 1 })
    .push(EventKind::StepFailed {
        step: "b".into(),
        attempt: 1,
        error: StepError::new(StepErrorKind::LlmError, "boom"),
        usage: usage(1, 1),
    })
    .push(EventKind::Replanned {
        revision: 2,
        reason: "b broke".into(),
        steps: spec(&[("fix", &["a"])]).steps,
        caused_by: Some("b".into()),
        usage: usage(1, 1),
    });
    let r = l.state().result();
    assert!(r.replanned);
    assert_eq!(r.plan.revision, 2);
    assert_eq!(r.revisions.len(), 2);
    assert_eq!(r.revisions[1].reason.as_deref(), Some("b broke"));
    let ids: Vec<_> = r.plan.steps.iter().map(|s| (s.id.as_str(), s.status)).collect();
    assert_eq!(ids, [("a", StepStatus::Completed), ("fix", StepStatus::Pending)]);
    assert_eq!(r.plan.steps[0].output.as_deref(), Some("A"));
}

#[test]
fn a_cancelled_run_marks_running_steps_interrupted() {
    let mut l = Log::new(RunOptions::default());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    })
    .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
    .push(EventKind::RunCancelled { reason: "user".into() });
    let s = l.state();
    assert_eq!(s.status, RunStatus::Cancelled);
    assert_eq!(s.plan.steps[0].status, StepStatus::Failed);
    l.push(EventKind::StepStarted { step: "a".into(), attempt: 2 });
    assert!(RunState::from_events(&l.events).is_err(), "nothing may follow the end of a run");
}

fn policy(on: FailurePolicy, retries: u32, replans: u32, mode: ReplanMode) -> Policy {
    Policy {
        on_step_failure: on,
        max_retries: retries,
        max_replans: replans,
        replan: mode,
        ..Policy::default()
    }
}

fn err() -> StepError {
    StepError::new(StepErrorKind::BudgetExhausted, "max_iterations (2) reached")
}

#[test]
fn policy_retry_retries_then_fails_the_run() {
    let p = policy(FailurePolicy::Retry, 2, 0, ReplanMode::OnFailure);
    let s: StepId = "s1".into();
    assert_eq!(on_step_failure(&p, &s, 1, &err(), 0), FailureAction::Retry);
    assert_eq!(on_step_failure(&p, &s, 2, &err(), 0), FailureAction::Retry);
    let FailureAction::FailRun(why) = on_step_failure(&p, &s, 3, &err(), 0) else { panic!() };
    assert!(why.contains("step s1 failed after 3 attempts: budget_exhausted"), "{why}");
}

#[test]
fn policy_skip_retries_then_skips() {
    let p = policy(FailurePolicy::Skip, 1, 0, ReplanMode::Never);
    assert_eq!(on_step_failure(&p, &"s".into(), 1, &err(), 0), FailureAction::Retry);
    assert_eq!(on_step_failure(&p, &"s".into(), 2, &err(), 0), FailureAction::Skip);
}

#[test]
fn policy_replan_retries_then_replans_within_the_budget() {
    let p = policy(FailurePolicy::Replan, 0, 1, ReplanMode::OnFailure);
    assert_eq!(on_step_failure(&p, &"s".into(), 1, &err(), 0), FailureAction::Replan);
    let FailureAction::FailRun(why) = on_step_failure(&p, &"s".into(), 1, &err(), 1) else { panic!() };
    assert!(why.contains("replan budget (1) is used up"), "{why}");
    let never = policy(FailurePolicy::Replan, 0, 5, ReplanMode::Never);
    let FailureAction::FailRun(why) = on_step_failure(&never, &"s".into(), 1, &err(), 0) else { panic!() };
    assert!(why.contains("replan = never"), "{why}");
}

#[test]
fn policy_abort_fails_at_once_and_cancel_is_never_retried() {
    let p = policy(FailurePolicy::Abort, 3, 3, ReplanMode::OnFailure);
    assert!(matches!(on_step_failure(&p, &"s".into(), 1, &err(), 0), FailureAction::FailRun(_)));
    let lenient = policy(FailurePolicy::Retry, 9, 0, ReplanMode::Never);
    let cancelled = StepError::new(StepErrorKind::Cancelled, "run cancelled");
    assert!(matches!(on_step_failure(&lenient, &"s".into(), 1, &cancelled, 0), FailureAction::FailRun(_)));
}

#[test]
fn a_run_budget_failure_ends_the_run_whatever_the_policy() {
    let e = StepError::run_budget_exhausted("run_budget.max_cost: 0.9 spent");
    for p in [
        policy(FailurePolicy::Retry, 9, 0, ReplanMode::Never),
        policy(FailurePolicy::Skip, 9, 0, ReplanMode::Never),
        policy(FailurePolicy::Replan, 0, 9, ReplanMode::OnFailure),
    ] {
        let FailureAction::FailRun(why) = on_step_failure(&p, &"s".into(), 1, &e, 0) else {
            panic!("{p:?} did not end the run")
        };
        assert_eq!(why, "run budget exhausted: step s: run_budget.max_cost: 0.9 spent");
    }
    // The step's own budget is an ordinary failure.
    let step = StepError::new(StepErrorKind::BudgetExhausted, "max_cost: 0.1 spent");
    let retry = policy(FailurePolicy::Retry, 1, 0, ReplanMode::Never);
    assert_eq!(on_step_failure(&retry, &"s".into(), 1, &step, 0), FailureAction::Retry);
}

#[test]
fn a_step_error_from_before_run_budgets_reads_as_a_step_failure() {
    let old: StepError = serde_json::from_str(r#"{"kind": "budget_exhausted", "message": "m"}"#).unwrap();
    assert_eq!(old, StepError::new(StepErrorKind::BudgetExhausted, "m"));
    let json = serde_json::to_value(StepError::new(StepErrorKind::LlmError, "m")).unwrap();
    assert_eq!(json, serde_json::json!({"kind": "llm_error", "message": "m"}), "no new field when false");
}

#[test]
fn replan_after_each_step_only_while_steps_remain_and_budget_lasts() {
    let mut opts = RunOptions::default();
    opts.policy.replan = ReplanMode::AfterEachStep;
    opts.policy.max_replans = 1;
    let mut l = Log::new(opts.clone());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[]), ("b", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    })
    .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
    .push(EventKind::StepCompleted {
        step: "a".into(),
        attempt: 1,
        output: "A".into(),
        usage: usage(1, 1),
    });
    assert!(replan_after_success(&opts.policy, &l.state()));
    l.push(EventKind::StepStarted { step: "b".into(), attempt: 1 });
    assert!(!replan_after_success(&opts.policy, &l.state()), "nothing pending to revise");
    let on_failure = Policy::default();
    assert!(!replan_after_success(&on_failure, &l.state()));
}

#[test]
fn a_step_failure_folds_into_its_typed_error() {
    let mut l = Log::new(RunOptions::default());
    let e = StepError::new(StepErrorKind::BudgetExhausted, "max_iterations (3) reached: a: b");
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 1),
        cached_from: None,
    })
    .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
    .push(EventKind::StepFailed { step: "a".into(), attempt: 1, error: e.clone(), usage: usage(1, 1) });
    let s = l.state();
    assert_eq!(s.last_errors.get(&StepId::from("a")), Some(&e));
    assert_eq!(s.plan.steps[0].error.as_deref(), Some(e.to_string().as_str()));
}

#[test]
fn run_budget_names_the_limit() {
    let mut opts = RunOptions::default();
    opts.run_budget.max_tokens = 10;
    let mut l = Log::new(opts);
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: usage(1, 6),
        cached_from: None,
    });
    let why = l.state().run_budget_exceeded().unwrap();
    assert!(why.contains("12 tokens used, limit 10"), "{why}");
}

#[test]
fn the_run_money_budget_is_used_up_once_reached_and_not_while_the_cost_is_unknown() {
    let mut opts = RunOptions::default();
    opts.run_budget.max_cost = 0.5;
    let priced = |amount: f64| Usage { cost: crate::llm::Cost::from_amount(amount), ..usage(1, 1) };
    let mut l = Log::new(opts.clone());
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: priced(0.25),
        cached_from: None,
    });
    assert_eq!(l.state().run_budget_exceeded(), None);
    l.push(EventKind::StepStarted { step: "a".into(), attempt: 1 }).push(EventKind::StepCompleted {
        step: "a".into(),
        attempt: 1,
        output: "x".into(),
        usage: priced(0.25),
    });
    let why = l.state().run_budget_exceeded().unwrap();
    assert_eq!(why, "run budget exhausted: cost 0.5 spent, limit 0.5");

    let mut unknown = Log::new(opts);
    let unpriced = Usage { cost: crate::llm::Cost::UNKNOWN, ..usage(1, 1) };
    unknown.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[])]),
        usage: priced(1.0),
        cached_from: None,
    });
    unknown.push(EventKind::StepStarted { step: "a".into(), attempt: 1 }).push(EventKind::StepCompleted {
        step: "a".into(),
        attempt: 1,
        output: "x".into(),
        usage: unpriced,
    });
    assert_eq!(unknown.state().usage.cost, crate::llm::Cost::UNKNOWN);
    assert_eq!(unknown.state().run_budget_exceeded(), None, "an unknown cost enforces no cap");
}

#[test]
fn fold_of_a_streamed_plan_keeps_what_ran_before_the_whole_plan() {
    let mut l = Log::new(RunOptions::default());
    // Nothing may start before any step has streamed in.
    let mut early = Log::new(RunOptions::default());
    early.push(EventKind::StepStarted { step: "a".into(), attempt: 1 });
    assert!(RunState::from_events(&early.events).is_err());

    let streamed = spec(&[("a", &[]), ("b", &["a"]), ("gone", &[])]).steps;
    l.push(EventKind::PlanStreamed { steps: streamed[..2].to_vec() })
        .push(EventKind::StepStarted { step: "a".into(), attempt: 1 })
        .push(EventKind::PlanStreamed { steps: streamed[2..].to_vec() })
        .push(EventKind::StepStarted { step: "gone".into(), attempt: 1 })
        .push(EventKind::StepCompleted {
            step: "gone".into(),
            attempt: 1,
            output: "G".into(),
            usage: usage(1, 1),
        })
        .push(EventKind::StepCompleted {
            step: "a".into(),
            attempt: 1,
            output: "A".into(),
            usage: usage(1, 1),
        })
        .push(EventKind::StepStarted { step: "b".into(), attempt: 1 });
    let s = l.state();
    assert_eq!(s.status, RunStatus::Planning);
    assert_eq!(s.plan.revision, 1);
    assert!(s.steps_may_run());

    // The whole plan: `gone` is left out (kept, being completed), `b` keeps running, `c` is new.
    l.push(EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[("a", &[]), ("b", &["a"]), ("c", &["b"])]),
        usage: usage(1, 10),
        cached_from: None,
    });
    let s = l.state();
    assert_eq!(s.status, RunStatus::Running);
    let got: Vec<(&str, StepStatus, u32)> =
        s.plan.steps.iter().map(|x| (x.id.as_str(), x.status, x.attempts)).collect();
    assert_eq!(
        got,
        [
            ("gone", StepStatus::Completed, 1),
            ("a", StepStatus::Completed, 1),
            ("b", StepStatus::Running, 1),
            ("c", StepStatus::Pending, 0),
        ]
    );
    assert_eq!(s.plan.step(&"a".into()).unwrap().output.as_deref(), Some("A"));
    assert_eq!(s.revisions.len(), 1);
    assert_eq!(s.usage.llm_calls, 3);

    // A step streamed twice is a broken log.
    let mut dup = Log::new(RunOptions::default());
    dup.push(EventKind::PlanStreamed { steps: streamed[..1].to_vec() })
        .push(EventKind::PlanStreamed { steps: streamed[..1].to_vec() });
    assert!(RunState::from_events(&dup.events).is_err());
}

#[test]
fn plan_proposed_reads_and_writes_as_before_unless_the_plan_was_cached() {
    // A log written before the plan cache existed.
    let old = r#"{"type":"PlanProposed","revision":1,"plan":{"goal":"g","steps":[]},
        "usage":{"llm_calls":1,"input_tokens":2,"output_tokens":3}}"#;
    let kind: EventKind = serde_json::from_str(old).unwrap();
    assert!(matches!(&kind, EventKind::PlanProposed { cached_from: None, .. }), "{kind:?}");
    // A planner-written plan is stored exactly as before: no new field.
    assert!(!serde_json::to_string(&kind).unwrap().contains("cached_from"));
    let from = RunId::new();
    let cached = EventKind::PlanProposed {
        revision: 1,
        plan: spec(&[]),
        usage: Usage::default(),
        cached_from: Some(from.clone()),
    };
    let text = serde_json::to_string(&cached).unwrap();
    assert!(text.contains(&format!("\"cached_from\":\"{from}\"")), "{text}");
    assert_eq!(serde_json::from_str::<EventKind>(&text).unwrap(), cached);
}
