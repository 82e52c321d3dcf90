use super::*;
use crate::prompts::PromptsError;

fn executor_input<'a>(inputs: Vec<StepResultLine<'a>>, tool: Option<&'a str>) -> ExecutorInput<'a> {
    ExecutorInput {
        task: "ship it",
        goal: "a release",
        step_id: "s2",
        description: "tag the commit",
        expected_outcome: "a tag exists",
        tool,
        inputs,
    }
}

#[test]
fn the_planner_message_lists_tools_or_says_there_are_none() {
    let p = UserPrompts::default();
    let tools =
        vec![ToolLine { name: "a", description: "does a" }, ToolLine { name: "b", description: "does b" }];
    let text = p.planner(&PlannerInput { task: "t", tools }).unwrap();
    assert_eq!(text, "Task: t\n\nAvailable tools:\n- a: does a\n- b: does b");
    let text = p.planner(&PlannerInput { task: "makespan depth=3 width=2", tools: vec![] }).unwrap();
    assert_eq!(text, "Task: makespan depth=3 width=2\n\nAvailable tools:\n(no tools)");
}

#[test]
fn the_executor_message_names_the_step_and_its_inputs() {
    let p = UserPrompts::default();
    let inputs = vec![
        StepResultLine { id: "s1", description: "build", output: Some("built v1") },
        StepResultLine { id: "s0", description: "lint", output: None },
    ];
    let text = p.executor(&executor_input(inputs, Some("run_command"))).unwrap();
    assert_eq!(
        text,
        "Task: ship it\nPlan goal: a release\n\nYour step (s2): tag the commit\nExpected outcome: a tag \
         exists\nSuggested tool: run_command\n\nResults of the steps this one depends on:\n- s1 (build): \
         built v1\n- s0 (lint): skipped, no result"
    );
    let bare = ExecutorInput { goal: "", expected_outcome: "", ..executor_input(vec![], None) };
    assert_eq!(p.executor(&bare).unwrap(), "Task: ship it\n\nYour step (s2): tag the commit");
}

#[test]
fn the_verifier_replanner_and_synthesizer_messages_carry_their_material() {
    let p = UserPrompts::default();
    let text = p.verifier(&VerifierInput { description: "d", expected_outcome: "e", result: "r" }).unwrap();
    assert_eq!(text, "Step: d\nExpected outcome: e\n\nThe step's result:\nr");

    let steps = vec![
        PlanStepLine {
            id: "s1",
            status: "Completed".into(),
            description: "one",
            depends_on: vec![],
            output: Some("out1"),
            error: None,
        },
        PlanStepLine {
            id: "s2",
            status: "Failed".into(),
            description: "two",
            depends_on: vec!["s1", "s0"],
            output: None,
            error: Some("boom"),
        },
        PlanStepLine {
            id: "s3",
            status: "Pending".into(),
            description: "three",
            depends_on: vec!["s2"],
            output: None,
            error: None,
        },
    ];
    let failed = Some(FailureLine { step: "s2", error: "boom".into() });
    let text = p.replanner(&ReplannerInput { task: "t", goal: "g", revision: 2, steps, failed }).unwrap();
    assert_eq!(
        text,
        "Task: t\nPlan goal: g\n\nCurrent plan (revision 2):\n- s1 [Completed] one (depends on: -)\n  output: \
         out1\n- s2 [Failed] two (depends on: s1, s0)\n  error: boom\n- s3 [Pending] three (depends on: s2)\n\n\
         Step s2 failed: boom\nDecide how to go on."
    );
    let text =
        p.replanner(&ReplannerInput { task: "t", goal: "g", revision: 1, steps: vec![], failed: None });
    assert!(
        text.unwrap().ends_with("\n\nA step just completed. Decide whether the remaining plan still fits.")
    );

    let results = vec![
        StepResultLine { id: "s1", description: "one", output: Some("first") },
        StepResultLine { id: "s2", description: "two", output: None },
    ];
    let text = p.synthesizer(&SynthesizerInput { task: "t", goal: "g", results }).unwrap();
    assert_eq!(text, "Task: t\nPlan goal: g\n\nStep results:\n## s1 — one\nfirst\n\n## s2 — two\n(skipped)");
}

#[test]
fn a_file_in_the_prompts_dir_replaces_only_its_role() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("executor.user.md"), "Do {{ description }} ({{ step_id }}).\n").unwrap();
    std::fs::write(dir.path().join("executor.md"), "a system prompt, not a template {{").unwrap();
    let p = UserPrompts::load(dir.path()).unwrap();
    assert_eq!(p.executor(&executor_input(vec![], None)).unwrap(), "Do tag the commit (s2).");
    let planner = p.planner(&PlannerInput { task: "t", tools: vec![] }).unwrap();
    assert_eq!(planner, UserPrompts::default().planner(&PlannerInput { task: "t", tools: vec![] }).unwrap());
    assert_ne!(p, UserPrompts::default());
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("planner.user.md"), "Task: {{ task }}\n{% for t in tools %}\n").unwrap();
    let err = UserPrompts::load(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PromptsError::Template(TemplateError { ref name, .. }) if name == "planner.user.md"),
        "{text}"
    );
    assert!(text.contains("planner.user.md:2"), "the line is named: {text}");
}

#[test]
fn a_variable_the_role_does_not_have_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("synthesizer.user.md"), "Task: {{ task }}\nGoal: {{ gaol }}\n").unwrap();
    let err = UserPrompts::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, PromptsError::Template(TemplateError { ref name, .. }) if name == "synthesizer.user.md"),
        "{err}"
    );
}

#[test]
fn an_unreadable_template_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("verifier.user.md"), [0xff, 0xfe, 0x00]).unwrap();
    let err = UserPrompts::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, PromptsError::Read { .. }) && err.to_string().contains("verifier.user.md"),
        "{err}"
    );
}
