//! The plan: a DAG of steps the planner LLM writes before anything runs.
//!
//! Pure data and validation, no I/O, so every rule here is unit-testable. [`PlanSpec`] is the
//! wire format the planner LLM returns (see `docs/architecture.md`); [`Plan`] is a spec plus each step's live
//! status, kept by the run state.

use std::collections::{HashMap, HashSet};
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub(crate) mod stream;
pub(crate) use stream::StepStream;

/// A step's id, unique within a run across every plan revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct StepId(pub String);

impl StepId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StepId {
    fn from(s: &str) -> Self {
        StepId(s.to_owned())
    }
}

/// One step as the planner writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique id, referenced by other steps' `depends_on`.
    pub id: StepId,
    /// What the executor should do.
    pub description: String,
    /// What "done" looks like; checked by the LLM when `verify_outcome` is on.
    #[serde(default)]
    pub expected_outcome: String,
    /// A hint naming the tool the step will mostly use (may be null).
    #[serde(default)]
    pub tool: Option<String>,
    /// Steps whose outputs this step needs; they finish before it starts.
    #[serde(default)]
    pub depends_on: Vec<StepId>,
}

/// The plan as the planner LLM returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// The task restated as the goal the steps reach together.
    #[serde(default)]
    pub goal: String,
    /// The steps, in the order the planner wrote them.
    pub steps: Vec<StepSpec>,
}

/// Why a plan (or a replan's new steps) was rejected. Every variant names the offending step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanError {
    /// The JSON did not parse into a plan.
    #[error("plan is not valid JSON for the plan schema: {0}")]
    Parse(String),
    /// No steps at all.
    #[error("plan has no steps")]
    Empty,
    /// An id that is blank or too long to be an id.
    #[error("step #{index} has an invalid id {id:?}: ids are 1-64 characters of [A-Za-z0-9_.-]")]
    InvalidId {
        /// The step's position in the plan (0-based).
        index: usize,
        /// The id as written.
        id: String,
    },
    /// Two steps (or a new step and a completed one) share an id.
    #[error("step {step}: duplicate step id")]
    DuplicateId {
        /// The id used twice.
        step: StepId,
    },
    /// A `depends_on` entry names no step.
    #[error("step {step}: depends_on names unknown step {dependency}")]
    UnknownDependency {
        /// The step.
        step: StepId,
        /// The id it names.
        dependency: StepId,
    },
    /// The dependencies form a cycle; `steps` is one cycle, in order.
    #[error("step {}: dependency cycle {}", .steps[0], join_ids(.steps))]
    Cycle {
        /// The steps of the cycle, in order.
        steps: Vec<StepId>,
    },
    /// The tool hint names a tool that is not registered.
    #[error("step {step}: unknown tool {tool:?} (available: {available})")]
    UnknownTool {
        /// The step.
        step: StepId,
        /// The tool it names.
        tool: String,
        /// The registered tools, comma-separated.
        available: String,
    },
    /// A step with an empty description.
    #[error("step {step}: description is empty")]
    EmptyDescription {
        /// The step.
        step: StepId,
    },
}

fn join_ids(ids: &[StepId]) -> String {
    let mut s = ids.iter().map(|i| i.0.as_str()).collect::<Vec<_>>().join(" -> ");
    if let Some(first) = ids.first() {
        s.push_str(" -> ");
        s.push_str(&first.0);
    }
    s
}

const MAX_ID_LEN: usize = 64;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl PlanSpec {
    /// Parses the planner's JSON. Tolerates a fenced code block around it, as models add them.
    pub fn parse(text: &str) -> Result<PlanSpec, PlanError> {
        serde_json::from_str(strip_code_fence(text)).map_err(|e| PlanError::Parse(e.to_string()))
    }

    /// Validates a fresh plan: ids, dependencies, cycles and tool hints.
    pub fn validate(&self, known_tools: &[&str]) -> Result<(), PlanError> {
        validate_steps(&self.steps, &[], known_tools)
    }
}

/// Validates `steps` that will sit beside already `completed` steps (a replan or an edited plan).
///
/// New steps may depend on completed steps, but may not reuse their ids.
pub fn validate_steps(
    steps: &[StepSpec],
    completed: &[StepId],
    known_tools: &[&str],
) -> Result<(), PlanError> {
    if steps.is_empty() {
        return Err(PlanError::Empty);
    }
    let done: HashSet<&StepId> = completed.iter().collect();
    let mut ids: HashSet<&StepId> = HashSet::with_capacity(steps.len());
    for (index, s) in steps.iter().enumerate() {
        if !valid_id(&s.id.0) {
            return Err(PlanError::InvalidId { index, id: s.id.0.clone() });
        }
        if done.contains(&s.id) || !ids.insert(&s.id) {
            return Err(PlanError::DuplicateId { step: s.id.clone() });
        }
    }
    for s in steps {
        if s.description.trim().is_empty() {
            return Err(PlanError::EmptyDescription { step: s.id.clone() });
        }
        for d in &s.depends_on {
            if !ids.contains(d) && !done.contains(d) {
                return Err(PlanError::UnknownDependency { step: s.id.clone(), dependency: d.clone() });
            }
        }
        if let Some(tool) = &s.tool
            && !tool.is_empty()
            && !known_tools.contains(&tool.as_str())
        {
            return Err(PlanError::UnknownTool {
                step: s.id.clone(),
                tool: tool.clone(),
                available: known_tools.join(", "),
            });
        }
    }
    if let Some(cycle) = find_cycle(steps) {
        return Err(PlanError::Cycle { steps: cycle });
    }
    Ok(())
}

/// Checks one step streamed before the rest of its plan, so that it can start early: a valid
/// id not used by the steps `before` it, a description, a known tool, and dependencies on those
/// earlier steps only (a step that waits on one still to come is not started early; the
/// whole plan's validation decides about it).
pub fn validate_streamed_step(
    step: &StepSpec,
    before: &[StepId],
    known_tools: &[&str],
) -> Result<(), PlanError> {
    validate_steps(std::slice::from_ref(step), before, known_tools)
}

/// Finds one dependency cycle among `steps` (edges to ids outside `steps` are ignored).
fn find_cycle(steps: &[StepSpec]) -> Option<Vec<StepId>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let index: HashMap<&StepId, usize> = steps.iter().enumerate().map(|(i, s)| (&s.id, i)).collect();
    let mut mark = vec![Mark::New; steps.len()];
    // Iterative DFS: a plan from an LLM can be long, and recursion depth must not depend on it.
    for root in 0..steps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = &steps[node].depends_on;
            if *next < deps.len() {
                let dep = &deps[*next];
                *next += 1;
                let Some(&d) = index.get(dep) else { continue };
                match mark[d] {
                    Mark::New => {
                        mark[d] = Mark::Active;
                        stack.push((d, 0));
                    }
                    Mark::Active => {
                        let start = stack.iter().position(|&(n, _)| n == d).unwrap_or(0);
                        return Some(stack[start..].iter().map(|&(n, _)| steps[n].id.clone()).collect());
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

/// Strips a surrounding markdown code fence (```json … ```), which models often add.
pub fn strip_code_fence(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else { return t };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// A step's lifecycle state: `pending → running → completed | failed | skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies or for an executor.
    Pending,
    /// Dispatched to an executor.
    Running,
    /// Finished with an output; immutable from here on.
    Completed,
    /// Failed and not (yet) retried.
    Failed,
    /// Skipped by policy or by the replanner.
    Skipped,
}

impl StepStatus {
    /// Completed or skipped: dependents may proceed.
    pub fn is_resolved(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Skipped)
    }
}

/// A step of the live plan: its spec plus what has happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// Step id.
    pub id: StepId,
    /// What the executor should do.
    pub description: String,
    /// What "done" looks like.
    pub expected_outcome: String,
    /// Tool hint.
    pub tool: Option<String>,
    /// Dependencies.
    pub depends_on: Vec<StepId>,
    /// Current state.
    pub status: StepStatus,
    /// How many times the step was started.
    pub attempts: u32,
    /// How many of those attempts failed (retries are counted against this).
    #[serde(default)]
    pub failures: u32,
    /// The final answer of the completed attempt.
    pub output: Option<String>,
    /// The error of the last failed attempt (or the skip reason).
    pub error: Option<String>,
    /// When the last attempt started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the step reached a final state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Step {
    /// A fresh, pending step from its spec.
    pub fn from_spec(spec: StepSpec) -> Step {
        Step {
            id: spec.id,
            description: spec.description,
            expected_outcome: spec.expected_outcome,
            tool: spec.tool,
            depends_on: spec.depends_on,
            status: StepStatus::Pending,
            attempts: 0,
            failures: 0,
            output: None,
            error: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// The step's spec (what the planner wrote), without its state.
    pub fn spec(&self) -> StepSpec {
        StepSpec {
            id: self.id.clone(),
            description: self.description.clone(),
            expected_outcome: self.expected_outcome.clone(),
            tool: self.tool.clone(),
            depends_on: self.depends_on.clone(),
        }
    }
}

/// The live plan: the latest revision's steps with their states.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// 0 before the first plan, then 1, 2, … one per replan.
    pub revision: u32,
    /// The goal the planner stated.
    #[serde(default)]
    pub goal: String,
    /// Completed steps of earlier revisions first, then the current revision's steps.
    pub steps: Vec<Step>,
}

impl Plan {
    /// A fresh plan at `revision` from a validated spec.
    pub fn from_spec(spec: PlanSpec, revision: u32) -> Plan {
        Plan { revision, goal: spec.goal, steps: spec.steps.into_iter().map(Step::from_spec).collect() }
    }

    /// The step with `id`.
    pub fn step(&self, id: &StepId) -> Option<&Step> {
        self.steps.iter().find(|s| &s.id == id)
    }

    /// The step with `id`, mutably.
    pub fn step_mut(&mut self, id: &StepId) -> Option<&mut Step> {
        self.steps.iter_mut().find(|s| &s.id == id)
    }

    /// Pending steps whose dependencies are all resolved (completed or skipped), in plan order.
    pub fn ready(&self) -> Vec<&Step> {
        let resolved: HashSet<&StepId> =
            self.steps.iter().filter(|s| s.status.is_resolved()).map(|s| &s.id).collect();
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending && s.depends_on.iter().all(|d| resolved.contains(d)))
            .collect()
    }

    /// Ids of completed steps (kept across replans).
    pub fn completed_ids(&self) -> Vec<StepId> {
        self.steps.iter().filter(|s| s.status == StepStatus::Completed).map(|s| s.id.clone()).collect()
    }

    /// True when every step is completed or skipped.
    pub fn all_resolved(&self) -> bool {
        self.steps.iter().all(|s| s.status.is_resolved())
    }

    /// Adds steps parsed from a plan that is still streaming in (`stream_plan`); the plan
    /// becomes revision 1 with its first streamed step.
    pub fn extend_streamed(&mut self, steps: &[StepSpec]) {
        self.revision = self.revision.max(1);
        self.steps.extend(steps.iter().cloned().map(Step::from_spec));
    }

    /// Takes the whole plan once the stream has ended: its steps, in its order, keep whatever
    /// already happened to the streamed step of the same id. A streamed step the final plan
    /// leaves out is kept, first, if it completed (its work is done and its output goes to the
    /// synthesis) and dropped otherwise, as a replan drops unfinished steps.
    pub fn adopt(&mut self, spec: PlanSpec, revision: u32) {
        let mut next = Plan::from_spec(spec, revision);
        let wanted: HashSet<StepId> = next.steps.iter().map(|s| s.id.clone()).collect();
        let (carried, left_out): (Vec<Step>, Vec<Step>) =
            self.steps.drain(..).partition(|s| wanted.contains(&s.id));
        let mut carried: HashMap<StepId, Step> = carried.into_iter().map(|s| (s.id.clone(), s)).collect();
        for step in &mut next.steps {
            if let Some(old) = carried.remove(&step.id) {
                step.status = old.status;
                step.attempts = old.attempts;
                step.failures = old.failures;
                step.output = old.output;
                step.error = old.error;
                step.started_at = old.started_at;
                step.finished_at = old.finished_at;
            }
        }
        let mut kept: Vec<Step> =
            left_out.into_iter().filter(|s| s.status == StepStatus::Completed).collect();
        kept.append(&mut next.steps);
        next.steps = kept;
        *self = next;
    }

    /// Replaces every step that is not completed with `new_steps` and bumps the revision.
    pub fn replace_remaining(&mut self, new_steps: Vec<StepSpec>) {
        self.steps.retain(|s| s.status == StepStatus::Completed);
        self.steps.extend(new_steps.into_iter().map(Step::from_spec));
        self.revision += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, deps: &[&str]) -> StepSpec {
        StepSpec {
            id: id.into(),
            description: format!("do {id}"),
            expected_outcome: String::new(),
            tool: None,
            depends_on: deps.iter().map(|d| StepId::from(*d)).collect(),
        }
    }

    fn plan(steps: Vec<StepSpec>) -> PlanSpec {
        PlanSpec { goal: "g".into(), steps }
    }

    #[test]
    fn parses_the_wire_format_and_a_fenced_block() {
        let json = r#"{"goal":"x","steps":[{"id":"s1","description":"d","expected_outcome":"e","tool":null,"depends_on":[]}]}"#;
        let p = PlanSpec::parse(json).unwrap();
        assert_eq!(p.steps[0].id.as_str(), "s1");
        let fenced = format!("```json\n{json}\n```");
        assert_eq!(PlanSpec::parse(&fenced).unwrap(), p);
    }

    #[test]
    fn rejects_unknown_fields_and_garbage() {
        assert!(matches!(
            PlanSpec::parse(r#"{"steps":[{"id":"a","description":"d","oops":1}]}"#),
            Err(PlanError::Parse(_))
        ));
        assert!(matches!(PlanSpec::parse("not json"), Err(PlanError::Parse(_))));
    }

    #[test]
    fn empty_plan_is_rejected() {
        assert_eq!(plan(vec![]).validate(&[]), Err(PlanError::Empty));
    }

    #[test]
    fn duplicate_ids_are_named() {
        let err = plan(vec![step("a", &[]), step("a", &[])]).validate(&[]).unwrap_err();
        assert_eq!(err, PlanError::DuplicateId { step: "a".into() });
        assert_eq!(err.to_string(), "step a: duplicate step id");
    }

    #[test]
    fn unknown_dependency_is_named() {
        let err = plan(vec![step("a", &["zz"])]).validate(&[]).unwrap_err();
        assert_eq!(err, PlanError::UnknownDependency { step: "a".into(), dependency: "zz".into() });
    }

    #[test]
    fn cycles_are_found_and_named() {
        let err = plan(vec![step("a", &["c"]), step("b", &["a"]), step("c", &["b"]), step("d", &[])])
            .validate(&[])
            .unwrap_err();
        let PlanError::Cycle { steps } = &err else { panic!("{err:?}") };
        assert_eq!(steps.len(), 3);
        assert!(err.to_string().contains("dependency cycle"), "{err}");
        let self_loop = plan(vec![step("a", &["a"])]).validate(&[]).unwrap_err();
        assert_eq!(self_loop, PlanError::Cycle { steps: vec!["a".into()] });
    }

    #[test]
    fn long_chain_has_no_cycle_and_no_stack_overflow() {
        let steps: Vec<_> = (0..5000)
            .map(|i| {
                let prev = format!("s{}", i.max(1) - 1);
                if i == 0 { step("s0", &[]) } else { step(&format!("s{i}"), &[prev.as_str()]) }
            })
            .collect();
        assert_eq!(plan(steps).validate(&[]), Ok(()));
    }

    #[test]
    fn unknown_tool_is_named_with_the_available_ones() {
        let mut s = step("a", &[]);
        s.tool = Some("teleport".into());
        let err = plan(vec![s]).validate(&["read_file", "write_file"]).unwrap_err();
        assert!(err.to_string().contains("step a: unknown tool \"teleport\""), "{err}");
        assert!(err.to_string().contains("read_file, write_file"), "{err}");
    }

    #[test]
    fn invalid_ids_and_blank_descriptions_are_rejected() {
        assert!(matches!(plan(vec![step("", &[])]).validate(&[]), Err(PlanError::InvalidId { .. })));
        assert!(matches!(plan(vec![step("a b", &[])]).validate(&[]), Err(PlanError::InvalidId { .. })));
        let mut s = step("a", &[]);
        s.description = "  ".into();
        assert_eq!(plan(vec![s]).validate(&[]), Err(PlanError::EmptyDescription { step: "a".into() }));
    }

    #[test]
    fn ready_set_follows_dependencies_and_treats_skipped_as_resolved() {
        let mut p = Plan::from_spec(plan(vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])]), 1);
        let ids = |p: &Plan| p.ready().iter().map(|s| s.id.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&p), ["a", "b"]);
        p.step_mut(&"a".into()).unwrap().status = StepStatus::Completed;
        p.step_mut(&"b".into()).unwrap().status = StepStatus::Running;
        assert!(ids(&p).is_empty());
        p.step_mut(&"b".into()).unwrap().status = StepStatus::Skipped;
        assert_eq!(ids(&p), ["c"]);
    }

    #[test]
    fn replan_keeps_completed_steps_and_validates_against_them() {
        let mut p = Plan::from_spec(plan(vec![step("a", &[]), step("b", &["a"])]), 1);
        p.step_mut(&"a".into()).unwrap().status = StepStatus::Completed;
        let new = vec![step("fix", &["a"]), step("b2", &["fix"])];
        assert_eq!(validate_steps(&new, &p.completed_ids(), &[]), Ok(()));
        assert_eq!(
            validate_steps(&[step("a", &[])], &p.completed_ids(), &[]),
            Err(PlanError::DuplicateId { step: "a".into() })
        );
        p.replace_remaining(new);
        assert_eq!(p.revision, 2);
        let ids: Vec<_> = p.steps.iter().map(|s| s.id.0.as_str()).collect();
        assert_eq!(ids, ["a", "fix", "b2"]);
    }
}
