//! stepwise: a Plan & Execute agent runtime on ractor and tokio.

pub mod llm;
pub mod options;
pub mod plan;
pub mod run;
pub mod tools;
