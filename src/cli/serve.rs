//! `stepwise serve`: the long-lived HTTP service.
//!
//! On start it resumes every unfinished run in its store: completed steps are never run again,
//! steps that were running are dispatched again (at-least-once), plans awaiting approval keep
//! waiting. On SIGTERM or Ctrl-C it stops accepting requests, gives running runs
//! `server.drain_secs` to finish, and exits; what is left is in the store and resumes next time.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use stepwise::run::RunStatus;
use stepwise::server::{self, ServerState};

use super::{ServeArgs, durable_runtime, load_config};

/// Runs the service until a termination signal.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(&args.model)?;
    if let Some(bind) = &args.bind {
        cfg.server.bind = bind.clone();
    }
    if let Some(dir) = &args.data_dir {
        cfg.runtime.data_dir = dir.clone();
    }
    cfg.validate()?;
    let addr: SocketAddr = cfg.server.bind.parse().with_context(|| format!("--bind {}", cfg.server.bind))?;
    let tokens = server::tokens_from_env(std::env::var("STEPWISE_API_TOKENS").ok().as_deref());
    server::check_bind(addr, &tokens)?;
    let runtime = durable_runtime(&cfg, args.model.record.as_deref()).await?;
    let resumed = runtime.recover().await.context("resuming unfinished runs")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    // Scripts and tests read the bound address from this line (port 0 picks a free port).
    eprintln!(
        "stepwise listening on http://{} (data dir {}, resumed {} unfinished runs)",
        listener.local_addr()?,
        cfg.runtime.data_dir.display(),
        resumed.len()
    );
    let state = ServerState::from_config(runtime.clone(), &cfg.server, tokens)
        .metrics(Arc::new(stepwise::telemetry::metrics::prometheus_text));
    server::serve(listener, state, shutdown_signal()).await.context("serving HTTP")?;
    drain(&runtime, Duration::from_secs(cfg.server.drain_secs)).await;
    match Arc::try_unwrap(runtime) {
        Ok(rt) => rt.shutdown().await,
        Err(rt) => drop(rt),
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("stepwise: shutting down: no new requests; draining running runs");
}

/// Waits until no run is running (runs awaiting approval don't count: they wait in the store),
/// or `limit` passes.
async fn drain(runtime: &stepwise::Runtime, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut busy = 0;
        for id in runtime.live_run_ids() {
            if runtime.get(&id).await.is_ok_and(|r| r.status != RunStatus::AwaitingApproval) {
                busy += 1;
            }
        }
        if busy == 0 {
            eprintln!("stepwise: drained");
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("stepwise: {busy} runs still running after {limit:?}; they resume on the next start");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
