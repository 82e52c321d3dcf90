//! `stepwise mcp`: stepwise as an MCP server on stdin and stdout, for MCP clients (desktop
//! assistants, IDEs, other agents) that start it as a child process. Runs are stored in the
//! data dir as with `serve`, and unfinished ones resume on start. stdout carries only the
//! protocol: logs go to stderr.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use rmcp::ServiceExt;
use stepwise::tools::mcp::expose::StepwiseMcp;

use super::{McpArgs, durable_runtime, load_config};

/// Serves until the client closes stdin.
pub async fn mcp(args: McpArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(&args.model)?;
    if let Some(dir) = &args.data_dir {
        cfg.runtime.data_dir = dir.clone();
    }
    cfg.validate()?;
    let runtime = durable_runtime(&cfg, args.model.record.as_deref()).await?;
    runtime.recover().await.context("resuming unfinished runs")?;
    let service = StepwiseMcp::new(runtime.clone())
        .limits(cfg.server.limits.clone())
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP server on stdio")?;
    let quit = service.waiting().await.context("serving MCP on stdio")?;
    tracing::debug!("MCP client gone: {quit:?}");
    match Arc::try_unwrap(runtime) {
        Ok(rt) => rt.shutdown().await,
        Err(rt) => drop(rt),
    }
    Ok(ExitCode::SUCCESS)
}
