//! The machine driven with no runtime at all: every policy path, streamed plans, resume from a
//! stored log at every point, cancel during replan, budgets, timers, lost service requests.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::llm::AgentRole;
use crate::options::{FailurePolicy, Policy, ReplanMode, RunOptions};
use crate::plan::{PlanSpec, StepSpec, StepStatus};
use crate::run::{Decision, ReplanDecision, RunId, StepErrorKind};

fn step(id: &str, deps: &[&str]) -> StepSpec {
    StepSpec {
        id: id.into(),
        description: format!("do {id}"),
        expected_outcome: String::new(),
        tool: None,
        depends_on: deps.iter().map(|d| StepId::from(*d)).collect(),
    }
}

fn plan(steps: &[(&str, &[&str])]) -> PlanSpec {
    PlanSpec { goal: "g".into(), steps: steps.iter().map(|(id, deps)| step(id, deps)).collect() }
}

fn usage(tokens: u64) -> Usage {
    Usage { llm_calls: 1, input_tokens: tokens, output_tokens: tokens, ..Usage::default() }
}

fn options(f: impl FnOnce(&mut Policy)) -> RunOptions {
    let mut o = RunOptions::default();
    f(&mut o.policy);
    o
}

/// A machine for a run just submitted (its `RunSubmitted` applied).
fn machine(options: RunOptions) -> (RunMachine, Vec<RunEvent>) {
    let id = RunId::new();
    let submitted = RunEvent {
        run_id: id.clone(),
        seq: 1,
        at: Utc::now(),
        kind: EventKind::RunSubmitted { task: "t".into(), options },
    };
    let run = RunState::from_events([&submitted]).unwrap().unwrap();
    (RunMachine::new(run, Arc::from(vec!["fetch".to_owned()])), vec![submitted])
}

fn names(t: &Transition) -> Vec<&'static str> {
    t.events.iter().map(|e| e.kind.name()).collect()
}

fn started(t: &Transition) -> Vec<(String, u32)> {
    (t.commands.iter())
        .filter_map(|c| match c {
            Command::StartStep(a) => Some((a.step.id.0.clone(), a.attempt)),
            _ => None,
        })
        .collect()
}

fn ok(step: &str, attempt: u32) -> Input {
    Input::StepFinished(StepReport {
        step: step.into(),
        attempt,
        outcome: Ok(format!("{step} done").into()),
        usage: usage(1),
    })
}

fn err(step: &str, attempt: u32) -> Input {
    let error = StepError::new(StepErrorKind::LlmError, "model said no");
    Input::StepFinished(StepReport { step: step.into(), attempt, outcome: Err(error), usage: usage(1) })
}

fn decision(d: Decision, steps: Vec<StepSpec>) -> Input {
    Input::ReplanReady(Ok((
        ReplanDecision { decision: d, reason: "because".into(), steps, final_answer: None },
        usage(2),
    )))
}

fn go(m: &mut RunMachine, input: Input) -> Transition {
    m.handle(input, Utc::now()).unwrap()
}

/// A machine with `p` proposed and its first steps started.
fn running(options: RunOptions, p: PlanSpec) -> (RunMachine, Transition) {
    let (mut m, _) = machine(options);
    let t = go(&mut m, Input::Start);
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Plan { stream: false })]);
    let t = go(&mut m, Input::PlanReady(Ok((p, usage(5)))));
    (m, t)
}

#[test]
fn a_happy_run_plans_runs_in_dependency_order_and_synthesises() {
    let (mut m, t) = running(RunOptions::default(), plan(&[("a", &[]), ("b", &[]), ("c", &["a", "b"])]));
    assert_eq!(names(&t), ["PlanProposed", "StepStarted", "StepStarted"]);
    assert_eq!(started(&t), [("a".into(), 1), ("b".into(), 1)], "independent steps start together");
    let t = go(&mut m, ok("a", 1));
    assert_eq!(names(&t), ["StepCompleted"]);
    assert!(t.commands.is_empty(), "c waits for b");
    let t = go(&mut m, ok("b", 1));
    assert_eq!(started(&t), [("c".into(), 1)]);
    let Command::StartStep(a) = &t.commands[0] else { panic!() };
    assert_eq!(a.inputs.len(), 2, "c gets the outputs of a and b");
    assert_eq!(a.inputs[0].output.as_deref(), Some("a done"));
    let t = go(&mut m, ok("c", 1));
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Synthesize)]);
    assert_eq!(m.waiting_for(), Some(Service::Synthesizer));
    let t = go(&mut m, Input::SynthesisReady(Ok(("answer".into(), usage(3)))));
    assert_eq!(names(&t), ["RunCompleted"]);
    assert_eq!(t.commands, vec![Command::Finish]);
    assert_eq!(m.run().status, RunStatus::Completed);
    assert_eq!(m.run().usage.llm_calls, 5, "plan, three steps, synthesis");
}

#[test]
fn a_reused_plan_is_proposed_with_its_source_and_no_usage_and_still_awaits_approval() {
    let (mut m, head) = machine(options(|p| p.require_approval = true));
    go(&mut m, Input::Start);
    let from = RunId::new();
    let t = go(&mut m, Input::PlanReused { plan: plan(&[("a", &[])]), from: from.clone() });
    assert_eq!(names(&t), ["PlanProposed"]);
    let EventKind::PlanProposed { cached_from, usage: spent, .. } = &t.events[0].kind else { panic!() };
    assert_eq!((cached_from.as_ref(), spent.llm_calls), (Some(&from), 0));
    assert_eq!(m.run().status, RunStatus::AwaitingApproval);
    assert_eq!(m.run().plan_cached_from.as_ref(), Some(&from));
    assert!(started(&t).is_empty(), "nothing starts before approval");
    // The stored log folds to the same state (a resumed run knows it reused a plan).
    let again = RunState::from_events(head.iter().chain(&t.events)).unwrap();
    assert_eq!(again.unwrap().plan_cached_from, Some(from));
    // A second answer to the same request changes nothing.
    assert_eq!(go(&mut m, Input::PlanReady(Ok((plan(&[("x", &[])]), usage(1))))), Transition::default());
}

#[test]
fn a_late_or_stale_report_changes_nothing() {
    let (mut m, _) = running(RunOptions::default(), plan(&[("a", &[])]));
    assert_eq!(go(&mut m, ok("a", 2)), Transition::default(), "not the attempt in flight");
    assert_eq!(go(&mut m, ok("zz", 1)), Transition::default(), "unknown step");
    assert_eq!(go(&mut m, Input::PlanReady(Ok((plan(&[("x", &[])]), usage(1))))), Transition::default());
}

#[test]
fn tool_events_of_the_current_attempt_are_recorded() {
    let (mut m, _) = running(RunOptions::default(), plan(&[("a", &[])]));
    let called = |attempt| EventKind::ToolCalled {
        step: "a".into(),
        attempt,
        call_id: "c1".into(),
        tool: "fetch".into(),
        arguments: serde_json::json!({}),
    };
    assert_eq!(names(&go(&mut m, Input::Tool(called(1)))), ["ToolCalled"]);
    assert!(go(&mut m, Input::Tool(called(7))).events.is_empty());
    assert_eq!(m.run().usage.tool_calls, 1);
}

#[test]
fn a_failed_step_is_retried_then_the_policy_applies() {
    let opts = options(|p| {
        p.max_retries = 1;
        p.on_step_failure = FailurePolicy::Skip;
    });
    let (mut m, _) = running(opts, plan(&[("a", &[]), ("b", &["a"])]));
    let t = go(&mut m, err("a", 1));
    assert_eq!(names(&t), ["StepFailed", "StepStarted"]);
    assert_eq!(started(&t), [("a".into(), 2)]);
    let t = go(&mut m, err("a", 2));
    assert_eq!(names(&t), ["StepFailed", "StepSkipped", "StepStarted"], "skipped: b runs without it");
    let Command::StartStep(b) = &t.commands[0] else { panic!() };
    assert_eq!(b.inputs[0].output, None);
}

#[test]
fn abort_and_retry_policies_fail_the_run_naming_the_step() {
    for policy in [FailurePolicy::Abort, FailurePolicy::Retry] {
        let opts = options(|p| {
            p.on_step_failure = policy;
            p.max_retries = 2;
        });
        let (mut m, _) = running(opts, plan(&[("a", &[]), ("b", &[])]));
        let t = go(&mut m, err("a", 1));
        if policy == FailurePolicy::Retry {
            assert_eq!(started(&t), [("a".into(), 2)]);
            let t = go(&mut m, err("a", 2));
            assert_eq!(names(&t), ["StepFailed", "StepStarted"]);
            let t = go(&mut m, err("a", 3));
            assert_eq!(names(&t), ["StepFailed", "RunFailed"]);
        } else {
            assert_eq!(names(&t), ["StepFailed", "RunFailed"]);
            assert_eq!(t.commands, vec![Command::Finish], "b's attempt is stopped by Finish");
        }
        assert!(m.run().error.as_deref().unwrap().contains("step a"), "{:?}", m.run().error);
        assert!(go(&mut m, ok("b", 1)).events.is_empty(), "nothing after the end");
    }
}

#[test]
fn a_cancelled_attempt_fails_the_run_without_retry() {
    let (mut m, _) = running(options(|p| p.max_retries = 5), plan(&[("a", &[])]));
    let error = StepError::new(StepErrorKind::Cancelled, "stop");
    let report = StepReport { step: "a".into(), attempt: 1, outcome: Err(error), usage: usage(1) };
    assert_eq!(names(&go(&mut m, Input::StepFinished(report))), ["StepFailed", "RunFailed"]);
}

fn replanning() -> RunOptions {
    options(|p| {
        p.max_retries = 0;
        p.on_step_failure = FailurePolicy::Replan;
    })
}

#[test]
fn a_replan_waits_for_in_flight_steps_then_revises_the_rest() {
    let (mut m, _) = running(replanning(), plan(&[("a", &[]), ("b", &[]), ("c", &["a"])]));
    let t = go(&mut m, err("a", 1));
    assert_eq!(names(&t), ["StepFailed"]);
    assert!(t.commands.is_empty(), "b is still running: the replan waits");
    let t = go(&mut m, ok("b", 1));
    let failed = Some(("a".into(), StepError::new(StepErrorKind::LlmError, "model said no")));
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Replan { failed })]);
    let t = go(&mut m, decision(Decision::Replan, vec![step("a2", &["b"]), step("c", &["a2"])]));
    assert_eq!(names(&t), ["Replanned", "StepStarted"]);
    assert_eq!(started(&t), [("a2".into(), 1)]);
    let EventKind::Replanned { caused_by, revision, .. } = &t.events[0].kind else { panic!() };
    assert_eq!((caused_by.as_ref().map(|s| s.0.as_str()), *revision), (Some("a"), 2));
    let Command::StartStep(a) = &t.commands[0] else { panic!() };
    assert_eq!(a.revision, 2);
    assert_eq!(m.run().plan.step(&"b".into()).unwrap().status, StepStatus::Completed, "kept");
}

#[test]
fn the_replanners_other_decisions() {
    let setup = || {
        let (mut m, _) = running(replanning(), plan(&[("a", &[]), ("b", &[])]));
        go(&mut m, ok("b", 1));
        go(&mut m, err("a", 1));
        m
    };
    let mut m = setup();
    let t = go(&mut m, decision(Decision::Continue, vec![]));
    assert_eq!(names(&t), ["ReplanConsidered", "StepSkipped"]);
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Synthesize)]);

    let mut m = setup();
    assert_eq!(names(&go(&mut m, decision(Decision::Finish, vec![]))), ["RunCompleted"]);
    assert_eq!(m.run().final_output.as_deref(), Some("because"));

    let mut m = setup();
    assert_eq!(names(&go(&mut m, decision(Decision::Abort, vec![]))), ["RunFailed"]);
    assert!(m.run().error.as_deref().unwrap().starts_with("aborted by the replanner"));

    let mut m = setup();
    let t = go(&mut m, decision(Decision::Replan, vec![step("b", &[])]));
    assert_eq!(names(&t), ["RunFailed"], "a revision may not reuse a completed id");
    assert_eq!(m.run().usage.llm_calls, 4, "the invalid revision's call still counts");

    let mut m = setup();
    let failure = ServiceFailure { error: "replanning failed: x".into(), usage: usage(9) };
    assert_eq!(names(&go(&mut m, Input::ReplanReady(Err(failure)))), ["RunFailed"]);
    assert_eq!(m.run().usage.input_tokens, 5 + 1 + 1 + 9, "a failed replan's tokens count");
}

#[test]
fn the_replan_budget_ends_replanning() {
    let opts = options(|p| {
        p.max_retries = 0;
        p.max_replans = 1;
        p.on_step_failure = FailurePolicy::Replan;
    });
    let (mut m, _) = running(opts, plan(&[("a", &[])]));
    go(&mut m, err("a", 1));
    go(&mut m, decision(Decision::Replan, vec![step("a", &[])]));
    let t = go(&mut m, err("a", 1));
    assert_eq!(names(&t), ["StepFailed", "RunFailed"]);
    assert!(m.run().error.as_deref().unwrap().contains("replan budget"));
}

#[test]
fn after_each_step_consults_the_replanner_while_steps_remain() {
    let (mut m, _) =
        running(options(|p| p.replan = ReplanMode::AfterEachStep), plan(&[("a", &[]), ("b", &["a"])]));
    let t = go(&mut m, ok("a", 1));
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Replan { failed: None })]);
    let t = go(&mut m, decision(Decision::Continue, vec![]));
    assert_eq!(names(&t), ["ReplanConsidered", "StepStarted"]);
    let t = go(&mut m, ok("b", 1));
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Synthesize)], "nothing left to revise");
}

#[test]
fn a_failed_plan_fails_the_run_and_its_tokens_count() {
    let (mut m, _) = machine(RunOptions::default());
    go(&mut m, Input::Start);
    let failure = ServiceFailure { error: "planning failed: bad".into(), usage: usage(40) };
    let t = go(&mut m, Input::PlanReady(Err(failure)));
    assert_eq!(names(&t), ["RunFailed"]);
    assert_eq!(m.run().usage.tokens(), 80);
    assert_eq!(m.run().usage.llm_calls, 1);
}

#[test]
fn streamed_steps_start_early_and_the_whole_plan_settles_them() {
    let (mut m, _) = machine(options(|p| p.stream_plan = true));
    assert_eq!(go(&mut m, Input::Start).commands, vec![Command::Ask(ServiceRequest::Plan { stream: true })]);
    let t = go(&mut m, Input::PlanStreamed(vec![step("a", &[]), step("b", &["later"]), step("x", &[])]));
    assert_eq!(names(&t), ["PlanStreamed", "StepStarted", "StepStarted"]);
    assert_eq!(started(&t), [("a".into(), 1), ("x".into(), 1)], "b waits: it depends on a step to come");
    let t = go(&mut m, ok("a", 1));
    assert_eq!(names(&t), ["StepCompleted"]);
    assert!(t.commands.is_empty(), "no synthesis before the whole plan");
    // The whole plan leaves x out (a repair rewrote it): its attempt stops.
    let t = go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[]), ("b", &["a"])]), usage(5)))));
    assert_eq!(names(&t), ["PlanProposed", "StepStarted"]);
    assert_eq!(t.commands[0], Command::StopStep { step: "x".into(), attempt: 1 });
    assert_eq!(started(&t), [("b".into(), 1)]);
    assert!(go(&mut m, ok("x", 1)).events.is_empty());
}

#[test]
fn approval_gates_the_plan() {
    let opts = options(|p| {
        p.require_approval = true;
        p.stream_plan = true;
        p.approval_timeout_secs = 60;
    });
    let (mut m, _) = machine(opts.clone());
    assert_eq!(go(&mut m, Input::Start).commands, vec![Command::Ask(ServiceRequest::Plan { stream: false })]);
    let t = go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[])]), usage(1)))));
    assert_eq!(names(&t), ["PlanProposed"]);
    let Command::Schedule { timer: Timer::Approval, after } = t.commands[0] else { panic!("{t:?}") };
    assert!(after <= Duration::from_secs(60) && after > Duration::from_secs(58));
    let invalid = plan(&[("a", &["nope"])]);
    let e = m.handle(Input::Approve(Some(invalid)), Utc::now()).unwrap_err();
    assert!(matches!(e, MachineError::Refused(Refusal::InvalidPlan(_))), "{e}");
    let t = go(&mut m, Input::Approve(Some(plan(&[("a2", &[])]))));
    assert_eq!(names(&t), ["PlanApproved", "StepStarted"]);
    assert_eq!(started(&t), [("a2".into(), 1)]);
    let e = m.handle(Input::Reject("no".into()), Utc::now()).unwrap_err();
    assert_eq!(e, MachineError::Refused(Refusal::NotAwaitingApproval(RunStatus::Running)));
    assert!(go(&mut m, Input::Timeout(Timer::Approval)).events.is_empty(), "approved already");

    let (mut m, _) = machine(opts.clone());
    go(&mut m, Input::Start);
    go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[])]), usage(1)))));
    assert_eq!(names(&go(&mut m, Input::Reject("no".into()))), ["RunCancelled"]);
    assert_eq!(m.run().error.as_deref(), Some("plan rejected: no"));

    let (mut m, _) = machine(opts);
    go(&mut m, Input::Start);
    go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[])]), usage(1)))));
    let t = go(&mut m, Input::Timeout(Timer::Approval));
    assert_eq!((names(&t), t.commands), (vec!["RunCancelled"], vec![Command::Finish]));
}

#[test]
fn cancel_during_replan_ends_the_run_and_the_late_answer_is_ignored() {
    let (mut m, _) = running(replanning(), plan(&[("a", &[])]));
    go(&mut m, err("a", 1));
    assert_eq!(m.waiting_for(), Some(Service::Replanner));
    let t = go(&mut m, Input::Cancel("user".into()));
    assert_eq!((names(&t), t.commands), (vec!["RunCancelled"], vec![Command::Finish]));
    assert_eq!(go(&mut m, decision(Decision::Continue, vec![])), Transition::default());
    let e = m.handle(Input::Cancel("again".into()), Utc::now()).unwrap_err();
    assert_eq!(e, MachineError::Refused(Refusal::AlreadyEnded(RunStatus::Cancelled)));
}

#[test]
fn run_budgets_end_the_run() {
    let mut opts = RunOptions::default();
    opts.run_budget.max_tokens = 20;
    opts.run_budget.timeout_ms = 5_000;
    let (mut m, _) = machine(opts.clone());
    let t = go(&mut m, Input::Start);
    let Command::Schedule { timer: Timer::Run, after } = t.commands[0] else { panic!("{t:?}") };
    assert!(after <= Duration::from_secs(5));
    go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[]), ("b", &["a"])]), usage(5)))));
    let Command::StartStep(a) = &go(&mut m, Input::Start).commands[1] else { panic!() };
    assert_eq!(a.budget.max_tokens, 10, "a step's tokens are clipped by what the run has left");
    let report = StepReport { step: "a".into(), attempt: 2, outcome: Ok("x".into()), usage: usage(10) };
    let t = go(&mut m, Input::StepFinished(report));
    assert_eq!(names(&t), ["StepCompleted", "RunFailed"]);
    assert!(m.run().error.as_deref().unwrap().contains("tokens used"));

    let (mut m, _) = machine(opts);
    go(&mut m, Input::Start);
    let t = m.handle(Input::Timeout(Timer::Run), Utc::now() + chrono::Duration::seconds(6)).unwrap();
    assert_eq!(names(&t), ["RunFailed"]);
    assert!(m.run().error.as_deref().unwrap().contains("timeout after 5000 ms"));
}

#[test]
fn time_awaiting_approval_does_not_count_against_the_run_timeout() {
    let mut opts = options(|p| p.require_approval = true);
    opts.run_budget.timeout_ms = 5_000;
    let (mut m, _) = machine(opts);
    let t0 = m.run().created_at;
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
    let t = m.handle(Input::Start, at(0)).unwrap();
    assert!(matches!(t.commands[0], Command::Schedule { timer: Timer::Run, .. }));
    m.handle(Input::PlanReady(Ok((plan(&[("a", &[])]), usage(1)))), at(1)).unwrap();
    // The timer armed while planning goes off while the plan waits: the clock is stopped.
    assert_eq!(m.handle(Input::Timeout(Timer::Run), at(5)).unwrap(), Transition::default());
    let t = m.handle(Input::Approve(None), at(60)).unwrap();
    let after = |t: &Transition| {
        t.commands.iter().find_map(|c| match c {
            Command::Schedule { timer: Timer::Run, after } => Some(*after),
            _ => None,
        })
    };
    assert_eq!(after(&t), Some(Duration::from_secs(4)), "1 s was spent planning");
    let t = m.handle(Input::Timeout(Timer::Run), at(62)).unwrap();
    assert_eq!((names(&t), after(&t)), (vec![], Some(Duration::from_secs(2))), "an early timer re-arms");
    let t = m.handle(Input::Timeout(Timer::Run), at(64)).unwrap();
    assert_eq!(names(&t), ["RunFailed"]);
}

#[test]
fn a_lost_request_is_sent_again_later_then_fails_the_run() {
    let (mut m, _) = machine(RunOptions::default());
    go(&mut m, Input::Start);
    let mut waited = Duration::ZERO;
    for loss in 1..MAX_SERVICE_LOSSES {
        let t = go(&mut m, Input::ServiceLost(Service::Planner));
        let timer = Timer::Resend { service: Service::Planner, loss };
        let [Command::Schedule { timer: scheduled, after }] = t.commands[..] else { panic!("{t:?}") };
        assert_eq!(scheduled, timer);
        waited += after;
        if loss > 1 {
            let stale = Timer::Resend { service: Service::Planner, loss: loss - 1 };
            assert!(go(&mut m, Input::Timeout(stale)).commands.is_empty(), "an older loss's timer");
        }
        let t = go(&mut m, Input::Timeout(timer));
        assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Plan { stream: false })]);
    }
    assert!(waited >= Duration::from_secs(5), "time enough for a restart: {waited:?}");
    assert!(go(&mut m, Input::ServiceLost(Service::Synthesizer)).commands.is_empty(), "not waited for");
    let t = go(&mut m, Input::ServiceLost(Service::Planner));
    assert_eq!(names(&t), ["RunFailed"]);
    assert!(m.run().error.as_deref().unwrap().contains("planner did not answer"));
}

/// Answers every command the way a healthy runtime would: plans with `p`, steps fail on their
/// first attempt when `flaky`, the replanner continues, synthesis succeeds.
#[derive(Clone)]
struct Sim {
    p: PlanSpec,
    flaky: bool,
}

impl Sim {
    fn answer(&self, c: &Command, inputs: &mut VecDeque<Input>) -> bool {
        match c {
            Command::StartStep(a) if self.flaky && a.attempt == 1 => inputs.push_back(err(&a.step.id.0, 1)),
            Command::StartStep(a) => inputs.push_back(ok(&a.step.id.0, a.attempt)),
            Command::Ask(ServiceRequest::Plan { .. }) => {
                inputs.push_back(Input::PlanReady(Ok((self.p.clone(), usage(1)))))
            }
            Command::Ask(ServiceRequest::Replan { .. }) => {
                inputs.push_back(decision(Decision::Continue, vec![]))
            }
            Command::Ask(ServiceRequest::Synthesize) => {
                inputs.push_back(Input::SynthesisReady(Ok(("done".into(), usage(1)))))
            }
            Command::Finish => return true,
            Command::StopStep { .. } | Command::Schedule { .. } => {}
        }
        false
    }

    /// Runs a machine from `Start` to `Finish`; returns the events it appended.
    fn drive(&self, mut m: RunMachine) -> (RunMachine, Vec<RunEvent>) {
        let mut inputs = VecDeque::from([Input::Start]);
        let mut log = Vec::new();
        while let Some(input) = inputs.pop_front() {
            let t = go(&mut m, input);
            log.extend(t.events);
            for c in &t.commands {
                if self.answer(c, &mut inputs) {
                    return (m, log);
                }
            }
        }
        panic!("the run did not finish: {:?}", m.run().status);
    }
}

#[test]
fn a_run_resumed_from_any_point_of_its_log_finishes_and_never_reruns_a_completed_step() {
    let policies = [
        options(|p| p.max_retries = 1),
        options(|p| {
            p.max_retries = 0;
            p.on_step_failure = FailurePolicy::Replan;
        }),
        options(|p| p.replan = ReplanMode::AfterEachStep),
        options(|p| p.stream_plan = true),
    ];
    for opts in policies {
        let sim = Sim { p: plan(&[("a", &[]), ("b", &[]), ("c", &["a", "b"]), ("d", &["c"])]), flaky: true };
        let (m, first) = machine(opts);
        let (_, tail) = sim.drive(m);
        let full: Vec<RunEvent> = first.into_iter().chain(tail).collect();
        for cut in 1..full.len() {
            let prefix = &full[..cut];
            let state = RunState::from_events(prefix).unwrap().unwrap();
            let done: Vec<StepId> = state.plan.completed_ids();
            let resumed = RunMachine::new(state, Arc::from(vec!["fetch".to_owned()]));
            let (m, log) = Sim { flaky: false, ..sim.clone() }.drive(resumed);
            assert!(m.run().status.is_terminal(), "cut {cut}: {:?}", m.run().status);
            for e in &log {
                if let EventKind::StepStarted { step, .. } = &e.kind {
                    assert!(!done.contains(step), "cut {cut}: completed step {step} ran again");
                }
            }
        }
        let end = RunState::from_events(&full).unwrap().unwrap();
        assert_eq!(end.status, RunStatus::Completed, "{:?}", end.error);
    }
}

#[test]
fn resume_mid_step_runs_the_interrupted_attempt_again_and_redecides_failures() {
    let sim = Sim { p: plan(&[("a", &[]), ("b", &[])]), flaky: false };
    let (m, first) = machine(options(|p| p.max_retries = 2));
    let mut m = m;
    let t1 = go(&mut m, Input::Start);
    let t2 = go(&mut m, Input::PlanReady(Ok((sim.p.clone(), usage(1)))));
    let t3 = go(&mut m, err("b", 1));
    assert_eq!(started(&t3), [("b".into(), 2)]);
    // The log as stored up to b's failure: StepStarted b/2 is not in it (the driver died first).
    let mut log: Vec<RunEvent> = first;
    log.extend(t1.events.into_iter().chain(t2.events).chain(t3.events.into_iter().take(1)));
    let state = RunState::from_events(&log).unwrap().unwrap();
    let mut resumed = RunMachine::new(state, Arc::from(vec!["fetch".to_owned()]));
    let t = go(&mut resumed, Input::Start);
    assert_eq!(started(&t), [("a".into(), 2), ("b".into(), 2)], "a was running; b's retry was due");
    assert!(t.commands.iter().all(|c| !matches!(c, Command::Ask(_))));
}

fn waiting(role: AgentRole, step: Option<(&str, u32)>) -> Input {
    Input::Provider(EventKind::ProviderWaiting {
        role,
        step: step.map(|(s, _)| s.into()),
        attempt: step.map(|(_, a)| a),
        provider: "http://127.0.0.1:9".into(),
        last_error: "connection refused".into(),
    })
}

fn resumed(role: AgentRole, step: Option<(&str, u32)>) -> Input {
    Input::Provider(EventKind::ProviderResumed {
        role,
        step: step.map(|(s, _)| s.into()),
        attempt: step.map(|(_, a)| a),
        waited_ms: 1500,
    })
}

#[test]
fn a_service_waiting_for_its_provider_is_recorded_and_cleared_by_its_answer() {
    let (mut m, _) = machine(RunOptions::default());
    go(&mut m, Input::Start);
    // Only the service the run waits for: the synthesizer is not asked yet.
    assert!(go(&mut m, waiting(AgentRole::Synthesizer, None)).events.is_empty());
    let t = go(&mut m, waiting(AgentRole::Planner, None));
    assert_eq!(names(&t), ["ProviderWaiting"]);
    assert!(t.commands.is_empty(), "waiting changes nothing else");
    let waits = &m.run().result().waiting_on_provider;
    assert_eq!(
        (waits.len(), waits[0].role, waits[0].last_error.as_str()),
        (1, AgentRole::Planner, "connection refused")
    );
    assert_eq!(names(&go(&mut m, resumed(AgentRole::Planner, None))), ["ProviderResumed"]);
    assert!(m.run().waiting_on_provider.is_empty());
    assert!(go(&mut m, resumed(AgentRole::Planner, None)).events.is_empty(), "no wait to resume");
    // A wait whose resume never came (a crash) ends with the plan.
    go(&mut m, waiting(AgentRole::Planner, None));
    go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[])]), usage(1)))));
    assert!(m.run().waiting_on_provider.is_empty());
}

#[test]
fn a_step_waiting_for_its_provider_is_recorded_for_the_attempt_in_flight_only() {
    let (mut m, _) = running(RunOptions::default(), plan(&[("a", &[]), ("b", &[])]));
    assert!(go(&mut m, waiting(AgentRole::Executor, Some(("a", 2)))).events.is_empty(), "stale attempt");
    assert!(go(&mut m, waiting(AgentRole::Executor, None)).events.is_empty(), "no step");
    assert!(go(&mut m, waiting(AgentRole::Planner, None)).events.is_empty(), "the plan is in");
    assert_eq!(names(&go(&mut m, waiting(AgentRole::Executor, Some(("a", 1))))), ["ProviderWaiting"]);
    assert_eq!(names(&go(&mut m, waiting(AgentRole::Verifier, Some(("b", 1))))), ["ProviderWaiting"]);
    assert_eq!(m.run().waiting_on_provider.len(), 2);
    // A wait does not use up the step: its report decides, and clears the wait.
    let t = go(&mut m, ok("a", 1));
    assert_eq!(names(&t), ["StepCompleted"]);
    assert_eq!(m.run().waiting_on_provider.len(), 1);
    assert_eq!(m.run().plan.step(&"a".into()).unwrap().failures, 0);
    // The run's end clears what is left, and a late event changes nothing.
    go(&mut m, Input::Cancel("stop".into()));
    assert!(m.run().waiting_on_provider.is_empty());
    assert!(go(&mut m, resumed(AgentRole::Verifier, Some(("b", 1)))).events.is_empty());
}

#[test]
fn provider_waits_survive_a_restart_until_the_call_answers() {
    let (mut m, mut log) = machine(RunOptions::default());
    log.extend(go(&mut m, Input::Start).events);
    log.extend(go(&mut m, waiting(AgentRole::Planner, None)).events);
    // A new driver folds the log: the run still shows the wait, and asks the planner again.
    let run = RunState::from_events(&log).unwrap().unwrap();
    assert_eq!(run.waiting_on_provider.len(), 1);
    let mut m = RunMachine::new(run, Arc::from(vec!["fetch".to_owned()]));
    let t = go(&mut m, Input::Start);
    assert_eq!(t.commands, vec![Command::Ask(ServiceRequest::Plan { stream: false })]);
    assert_eq!(names(&go(&mut m, waiting(AgentRole::Planner, None))), ["ProviderWaiting"]);
    assert_eq!(m.run().waiting_on_provider.len(), 1, "the new wait replaces the old one");
    go(&mut m, Input::PlanReady(Ok((plan(&[("a", &[])]), usage(1)))));
    assert!(m.run().waiting_on_provider.is_empty());
}
