//! stepwise: a Plan & Execute agent runtime on ractor and tokio.
//!
//! An LLM writes an explicit plan (a DAG of steps) before anything runs; an actor system runs
//! it: a planner, one tracker per run, a pool of executors (each step a bounded ReAct loop with
//! tools), a replanner and a synthesizer, under one supervisor.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use stepwise::{Stepwise, llm::scripted::ScriptedModel};
//! let model = ScriptedModel::from_file("examples/scripts/research_report.json".as_ref())?;
//! let runtime = Stepwise::builder().model(Arc::new(model)).build().await?;
//! let result = runtime.run("Write a report on enterprise LLM adoption").await?;
//! println!("{}", result.final_output.unwrap_or_default());
//! # Ok(()) }
//! ```

pub mod actors;
#[cfg(feature = "postgres")]
pub mod cluster;
pub mod config;
pub mod llm;
pub mod options;
pub mod plan;
pub mod prompts;
pub mod run;
pub mod runtime;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tools;

pub use runtime::{RunHandle, Runtime, RuntimeBuilder, RuntimeError, Stepwise};
