//! Tool calls waiting for approval, driven with no runtime: pause, answers in any order, resume
//! from the checkpoint, timeouts, and a restart while calls wait.

use chrono::{Duration as Span, Utc};
use serde_json::json;

use super::*;
use crate::options::RunOptions;
use crate::plan::{PlanSpec, StepSpec};
use crate::run::{PendingCall, RunId, StepCheckpoint, ToolDecision};

fn plan(ids: &[&str]) -> PlanSpec {
    let step = |id: &&str| StepSpec {
        id: (*id).into(),
        description: format!("do {id}"),
        expected_outcome: String::new(),
        tool: None,
        depends_on: vec![],
    };
    PlanSpec { goal: "g".into(), steps: ids.iter().map(step).collect() }
}

fn options(timeout_secs: u64) -> RunOptions {
    let mut o = RunOptions::default();
    o.policy.approve_tools = vec!["deploy".into()];
    o.policy.tool_approval_timeout_secs = timeout_secs;
    o
}

/// A running machine with `ids` started, and its log so far.
fn running(options: RunOptions, ids: &[&str], now: DateTime<Utc>) -> (RunMachine, Vec<RunEvent>) {
    let id = RunId::new();
    let submitted =
        RunEvent { run_id: id, seq: 1, at: now, kind: EventKind::RunSubmitted { task: "t".into(), options } };
    let run = RunState::from_events([&submitted]).unwrap().unwrap();
    let mut m = RunMachine::new(run, Arc::from(vec!["deploy".to_owned()]));
    let mut log = vec![submitted];
    log.extend(m.handle(Input::Start, now).unwrap().events);
    log.extend(m.handle(Input::PlanReady(Ok((plan(ids), Usage::default()))), now).unwrap().events);
    (m, log)
}

fn call(approval_id: &str, call_id: &str, index: u32) -> PendingCall {
    PendingCall {
        approval_id: approval_id.into(),
        call_id: call_id.into(),
        tool: "deploy".into(),
        arguments: json!({"target": call_id}),
        call_index: index,
    }
}

fn checkpoint(iterations: u32) -> StepCheckpoint {
    StepCheckpoint {
        messages: vec![crate::llm::Message::user("go")],
        iterations,
        tool_calls: 1,
        usage: Usage { llm_calls: iterations.into(), ..Usage::of_tokens(10, 5) },
        worked_ms: 1200,
    }
}

fn paused(step: &str, calls: Vec<PendingCall>) -> Input {
    let outcome = Ok(StepEnd::Paused { calls, checkpoint: checkpoint(1) });
    Input::StepFinished(StepReport { step: step.into(), attempt: 1, outcome, usage: Usage::default() })
}

fn answer(approval_id: &str, decision: ToolDecision) -> Input {
    Input::ResolveToolCall { approval_id: approval_id.into(), decision }
}

/// A resumed attempt: step, attempt, and each call's approval id with its outcome.
type Resumed = (String, u32, Vec<(String, &'static str)>);

fn resumes(t: &Transition) -> Vec<Resumed> {
    (t.commands.iter())
        .filter_map(|c| match c {
            Command::StartStep(a) => a.resume.as_ref().map(|r| {
                let calls = r.calls.iter().map(|(c, d)| (c.approval_id.clone(), d.outcome())).collect();
                (a.step.id.0.clone(), a.attempt, calls)
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn a_paused_step_waits_while_the_others_go_on_and_resumes_once_all_its_calls_are_answered() {
    let now = Utc::now();
    let (mut m, _) = running(options(0), &["a", "b", "c"], now);
    let t = m.handle(paused("a", vec![call("x1", "c1", 0), call("x2", "c2", 1)]), now).unwrap();
    assert_eq!(t.events.iter().map(|e| e.kind.name()).collect::<Vec<_>>(), ["ToolApprovalRequested"]);
    assert!(t.commands.is_empty(), "b and c are still running; nothing to start, nothing to fail");
    assert_eq!(m.in_flight(&"a".into()), None, "the executor is free");
    let t = m.handle(paused("b", vec![call("y1", "c1", 0)]), now).unwrap();
    assert!(t.commands.is_empty());
    let ids: Vec<String> = m.run().pending_approvals().into_iter().map(|p| p.approval_id).collect();
    assert_eq!(ids, ["x1", "x2", "y1"]);
    // c completes meanwhile: the run neither synthesises nor calls itself stuck.
    let done =
        StepReport { step: "c".into(), attempt: 1, outcome: Ok("c done".into()), usage: Usage::default() };
    let t = m.handle(Input::StepFinished(done), now).unwrap();
    assert_eq!(t.commands, vec![], "two steps still wait for people");
    // One of a's two calls answered: a does not resume yet. b's only one: b resumes.
    let t = m.handle(answer("x2", ToolDecision::Reject { reason: "no".into() }), now).unwrap();
    assert!(resumes(&t).is_empty());
    let t = m.handle(answer("y1", ToolDecision::Approve), now).unwrap();
    assert_eq!(resumes(&t), [("b".into(), 1, vec![("y1".into(), "approved")])]);
    let edited = ToolDecision::Edit { arguments: json!({"target": "staging"}) };
    let t = m.handle(answer("x1", edited), now).unwrap();
    assert_eq!(resumes(&t), [("a".into(), 1, vec![("x1".into(), "edited"), ("x2".into(), "rejected")])]);
    let Command::StartStep(a) = &t.commands[0] else { panic!() };
    assert_eq!(a.resume.as_ref().unwrap().checkpoint, checkpoint(1), "the attempt resumes where it paused");
    assert_eq!(m.in_flight(&"a".into()), Some(1), "same attempt, same idempotency keys");
}

#[test]
fn answers_are_refused_for_unknown_ids_and_a_second_time() {
    let now = Utc::now();
    let (mut m, _) = running(options(0), &["a", "b"], now);
    m.handle(paused("a", vec![call("x1", "c1", 0)]), now).unwrap();
    let refused = |m: &mut RunMachine, id: &str| match m.handle(answer(id, ToolDecision::Approve), now) {
        Err(MachineError::Refused(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(&mut m, "nope"), Refusal::UnknownApproval("nope".into()));
    m.handle(answer("x1", ToolDecision::Approve), now).unwrap();
    assert_eq!(refused(&mut m, "x1"), Refusal::AlreadyResolved("x1".into()));
    let ok =
        StepReport { step: "a".into(), attempt: 1, outcome: Ok("a done".into()), usage: Usage::default() };
    m.handle(Input::StepFinished(ok), now).unwrap();
    assert_eq!(
        refused(&mut m, "x1"),
        Refusal::AlreadyResolved("x1".into()),
        "still known once the step is done"
    );
}

#[test]
fn an_unanswered_call_times_out_as_a_rejection_and_the_step_resumes() {
    let t0 = Utc::now();
    let (mut m, _) = running(options(60), &["a", "b"], t0);
    let t = m.handle(paused("a", vec![call("x1", "c1", 0)]), t0).unwrap();
    assert_eq!(
        t.commands,
        vec![Command::Schedule { timer: Timer::ToolApprovals, after: Duration::from_secs(60) }]
    );
    // b pauses 20 s later: its deadline is later than the timer set, so no second timer.
    let t = m.handle(paused("b", vec![call("y1", "c1", 0)]), t0 + Span::seconds(20)).unwrap();
    assert!(t.commands.is_empty(), "{:?}", t.commands);
    let t = m.handle(Input::Timeout(Timer::ToolApprovals), t0 + Span::seconds(60)).unwrap();
    assert_eq!(resumes(&t), [("a".into(), 1, vec![("x1".into(), "timed_out")])]);
    assert!(
        t.commands
            .contains(&Command::Schedule { timer: Timer::ToolApprovals, after: Duration::from_secs(20) }),
        "set again for b's deadline: {:?}",
        t.commands
    );
    assert_eq!(m.run().pending_approvals().len(), 1);
}

#[test]
fn after_a_restart_a_paused_step_is_not_run_again_and_its_wait_goes_on() {
    let t0 = Utc::now();
    let (mut m, mut log) = running(options(600), &["a", "b"], t0);
    log.extend(m.handle(paused("a", vec![call("x1", "c1", 0)]), t0).unwrap().events);
    let state = RunState::from_events(&log).unwrap().unwrap();
    let mut again = RunMachine::new(state, Arc::from(vec!["deploy".to_owned()]));
    let t = again.handle(Input::Start, t0 + Span::seconds(100)).unwrap();
    log.extend(t.events.clone());
    let started: Vec<&str> = (t.commands.iter())
        .filter_map(|c| match c {
            Command::StartStep(a) => Some(a.step.id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["b"], "b was interrupted and runs again; a waits for its person");
    assert!(
        t.commands
            .contains(&Command::Schedule { timer: Timer::ToolApprovals, after: Duration::from_secs(500) })
    );
    assert_eq!(again.run().pending_approvals()[0].approval_id, "x1");
    let t = again.handle(answer("x1", ToolDecision::Approve), t0 + Span::seconds(101)).unwrap();
    assert_eq!(resumes(&t), [("a".into(), 1, vec![("x1".into(), "approved")])]);
    // Answered but not finished when the driver died: the next driver resumes it, not a new attempt.
    log.extend(t.events);
    let state = RunState::from_events(&log).unwrap().unwrap();
    let t = RunMachine::new(state, Arc::from(vec!["deploy".to_owned()])).handle(Input::Start, t0).unwrap();
    assert_eq!(resumes(&t), [("a".into(), 1, vec![("x1".into(), "approved")])]);
}

#[test]
fn a_cancelled_run_drops_its_pending_calls() {
    let now = Utc::now();
    let (mut m, _) = running(options(0), &["a"], now);
    m.handle(paused("a", vec![call("x1", "c1", 0)]), now).unwrap();
    let t = m.handle(Input::Cancel("stop".into()), now).unwrap();
    assert_eq!(t.commands, vec![Command::Finish]);
    assert!(m.run().pending_approvals().is_empty());
    assert!(matches!(
        m.handle(answer("x1", ToolDecision::Approve), now),
        Err(MachineError::Refused(Refusal::AlreadyEnded(_)))
    ));
}

#[test]
fn approval_events_round_trip_through_json() {
    let now = Utc::now();
    let (mut m, _) = running(options(0), &["a"], now);
    let mut events = m.handle(paused("a", vec![call("x1", "c1", 0)]), now).unwrap().events;
    let edited = ToolDecision::Edit { arguments: json!({"target": "prod"}) };
    events.extend(m.handle(answer("x1", edited), now).unwrap().events);
    for e in &events {
        let text = serde_json::to_string(e).unwrap();
        assert_eq!(&serde_json::from_str::<RunEvent>(&text).unwrap(), e, "{text}");
    }
    let resolved = serde_json::to_value(&events[1]).unwrap();
    assert_eq!(resolved["decision"], "edit");
    assert_eq!(resolved["arguments"]["target"], "prod");
}

#[test]
fn a_streamed_step_paused_then_left_out_of_the_whole_plan_waits_no_more() {
    let now = Utc::now();
    let mut o = options(0);
    o.policy.stream_plan = true;
    let submitted = RunEvent {
        run_id: RunId::new(),
        seq: 1,
        at: now,
        kind: EventKind::RunSubmitted { task: "t".into(), options: o },
    };
    let run = RunState::from_events([&submitted]).unwrap().unwrap();
    let mut m = RunMachine::new(run, Arc::from(vec!["deploy".to_owned()]));
    m.handle(Input::Start, now).unwrap();
    m.handle(Input::PlanStreamed(plan(&["a"]).steps), now).unwrap();
    m.handle(paused("a", vec![call("x1", "c1", 0)]), now).unwrap();
    assert_eq!(m.run().pending_approvals().len(), 1);
    let t = m.handle(Input::PlanReady(Ok((plan(&["b"]), Usage::default()))), now).unwrap();
    assert!(m.run().pending_approvals().is_empty(), "a is not in the plan any more");
    assert!(t.commands.iter().any(|c| matches!(c, Command::StartStep(a) if a.step.id.as_str() == "b")));
}
