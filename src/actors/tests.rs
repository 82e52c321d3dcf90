//! The actor system with its service actors killed under it: every run still ends.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::llm::scripted::ScriptedModel;
use crate::run::RunStatus;
use crate::{Runtime, Stepwise};

async fn runtime(latency_ms: u64) -> Runtime {
    let step = |id: &str| json!({"id": id, "description": id, "expected_outcome": "", "tool": null, "depends_on": []});
    let script = json!({
        "latency_ms": latency_ms,
        "planner": [{"json": {"goal": "g", "steps": [step("a"), step("b")]}}],
        "executor": ["done"],
        "synthesizer": ["merged"],
    });
    let model = ScriptedModel::from_json(script).expect("script");
    let workspace = tempfile::tempdir().expect("tempdir").keep();
    Stepwise::builder().model(Arc::new(model)).workspace_root(workspace).build().await.expect("runtime")
}

/// Waits (bounded) for every run's result and checks that each completed.
async fn assert_all_complete(handles: &[crate::RunHandle], within: Duration) {
    let results = futures::future::join_all(handles.iter().map(|h| h.result()));
    for r in tokio::time::timeout(within, results).await.expect("every run ends") {
        let r = r.expect("result");
        assert_eq!(r.status, RunStatus::Completed, "run {}: {:?}", r.id, r.error);
    }
}

/// Waits (bounded) until the supervisor has published a replacement for the planner `old`.
async fn replaced(rt: &Runtime, old: ractor::ActorId) {
    for _ in 0..200 {
        if rt.shared().services().is_some_and(|s| s.planner.get_id() != old) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the supervisor did not restart the planner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_waiting_for_a_killed_planner_still_end() {
    let rt = runtime(150).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        handles.push(rt.submit(&format!("before the kill {i}")).await.expect("submit"));
    }
    // Runs are waiting for their plans; kill the planner, then submit more at once: their
    // requests meet a dead actor or a mailbox that is dropped, not an answer.
    let planner = rt.shared().services().expect("services").planner;
    planner.kill();
    for i in 0..8 {
        handles.push(rt.submit(&format!("during the restart {i}")).await.expect("submit"));
    }
    replaced(&rt, planner.get_id()).await;
    // And once more, with runs in every phase.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let services = rt.shared().services().expect("services");
    services.planner.kill();
    services.synthesizer.kill();
    services.replanner.kill();
    for i in 0..4 {
        handles.push(rt.submit(&format!("after the second kill {i}")).await.expect("submit"));
    }
    assert_all_complete(&handles, Duration::from_secs(60)).await;
}

/// A planner that takes requests and drops them unanswered, as a planner that dies with
/// requests in its mailbox does.
struct BlackHole;

impl ractor::Actor for BlackHole {
    type Msg = crate::actors::messages::PlannerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        msg: Self::Msg,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        drop(msg);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_unanswered_is_sent_again_to_the_current_service() {
    let rt = runtime(0).await;
    let real = rt.shared().services().expect("services");
    let (hole, _) = ractor::Actor::spawn(None, BlackHole, ()).await.expect("spawn");
    let publish = |planner| {
        let mut services = real.clone();
        services.planner = planner;
        *rt.shared().services.write().unwrap() = Some(services);
    };
    publish(hole.clone());
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(rt.submit(&format!("lost plan {i}")).await.expect("submit"));
    }
    // Each run's request is lost at least once; the resent one must reach the real planner.
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(real.planner.clone());
    hole.stop(None);
    assert_all_complete(&handles, Duration::from_secs(30)).await;
}
