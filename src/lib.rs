//! stepwise: a Plan & Execute agent runtime on ractor and tokio.

pub mod config;
pub mod llm;
pub mod options;
pub mod plan;
pub mod prompts;
pub mod tools;
