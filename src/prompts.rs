//! System prompts per role (placeholder until the prompts module lands).

/// The system prompts of each role.
#[derive(Debug, Clone)]
pub struct Prompts {
    /// Planner.
    pub planner: String,
    /// Executor.
    pub executor: String,
    /// Verifier.
    pub verifier: String,
    /// Replanner.
    pub replanner: String,
    /// Synthesizer.
    pub synthesizer: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            planner: "Write a plan as JSON.".into(),
            executor: "Do the step.".into(),
            verifier: "Judge the step.".into(),
            replanner: "Revise the plan.".into(),
            synthesizer: "Write the final answer.".into(),
        }
    }
}
