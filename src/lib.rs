//! stepwise: a Plan & Execute agent runtime on ractor and tokio.
//!
//! A model writes an explicit plan (a DAG of steps, each with a description and an expected
//! outcome) before anything runs; an actor system then runs it: a planner, one tracker per run, a
//! pool of executors (each step a bounded ReAct loop with tools and its own budget), a replanner
//! and a synthesizer, under one supervisor. Every run is a log of [`RunEvent`]s in a
//! [`RunStore`], so it survives a restart, and every step's model and tool calls are spans of one
//! OpenTelemetry trace.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//!
//! use stepwise::llm::scripted::ScriptedModel;
//! use stepwise::{RunStatus, Stepwise};
//!
//! // The scripted model replays answers offline; `llm::providers::build_models` makes real ones.
//! let model = ScriptedModel::from_json(serde_json::json!({
//!     "planner": [{"json": {"goal": "a greeting", "steps": [
//!         {"id": "s1", "description": "say hello", "expected_outcome": "a greeting",
//!          "tool": null, "depends_on": []}]}}],
//!     "steps": {"s1": ["hello"]},
//!     "synthesizer": ["Hello, world"]
//! }))?;
//! let runtime = Stepwise::builder().model(Arc::new(model)).build().await?;
//! let result = runtime.run("Say hello").await?;
//! assert_eq!(result.status, RunStatus::Completed);
//! assert_eq!(result.final_output.as_deref(), Some("Hello, world"));
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! Where to go next:
//! - [`RuntimeBuilder`]: models per role, tools, the store, budgets and policies, the executor
//!   pool; [`Runtime::submit_with`] and [`RunHandle`] to watch, approve and cancel a run.
//! - [`ChatModel`] for a model of your own, [`typed_tool`] / [`Tool`] for tools.
//! - [`server::serve`] to put the HTTP API (and the web page) in front of a runtime, inside your
//!   own axum application if you like (`examples/embed_in_axum.rs`).
//! - [`Config`] to read the same `stepwise.toml` the binary reads.
//!
//! The crate's modules hold the rest of each area's public types; the actors themselves are an
//! implementation detail, reached only through [`Runtime`] and [`RunHandle`].

#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod actors;
#[cfg(feature = "postgres")]
pub mod cluster;
pub mod config;
pub(crate) mod executors;
pub mod llm;
pub mod options;
pub mod plan;
pub mod prompts;
pub mod run;
mod runtime;
pub mod server;
pub mod store;
pub mod telemetry;
pub(crate) mod text;
pub mod tools;

pub use actors::messages::ControlError;
#[cfg(feature = "postgres")]
pub use cluster::Replica;
pub use config::Config;
pub use executors::{ExecutorLoad, PoolBounds};
pub use llm::{AgentRole, ChatModel, ChatRequest, ChatResponse, Cost, LlmError, Models, Usage};
pub use options::{FailurePolicy, Policy, ReplanMode, RunBudget, RunOptions, StepBudget};
pub use plan::{PlanSpec, StepId, StepSpec, StepStatus};
pub use run::{
    EventKind, PendingApproval, Refusal, RunEvent, RunId, RunResult, RunStatus, StepError, ToolDecision,
};
pub use runtime::{
    DEFAULT_LLM_CONCURRENCY, EventStream, RunHandle, Runtime, RuntimeBuilder, RuntimeError, Stepwise,
};
#[cfg(feature = "postgres")]
pub use store::postgres::PostgresStore;
pub use store::sqlite::SqliteStore;
pub use store::{MemoryStore, RunStore, StoreError};
pub use tools::{Tool, ToolContext, ToolError, ToolRegistry, typed_tool};
