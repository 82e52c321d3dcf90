//! Scaffold a Python REST API project with the real built-in tools.
//!
//! Shows a plan with a fan-out and a fan-in — `structure` first, then `dependencies` and
//! `dockerfile` in parallel, then `readme` once all three are done — whose steps really act on
//! disk through the built-in tools: `run_command` (enabled here, allowlisting only `mkdir` and
//! `ls`), `write_file` and `list_dir`. Each run works in its own directory,
//! `<workspace_root>/<run id>`. The model is the offline scripted one, replaying
//! `examples/scripts/scaffold_project.json`; offline, "install dependencies" writes
//! `requirements.txt` instead of running pip, and its step output says so.
//!
//! Run it (the generated project is kept and its path printed; pass a directory to choose
//! the workspace root):
//!
//! ```text
//! cargo run --example scaffold_project [-- WORKSPACE_ROOT]
//! cargo test --example scaffold_project
//! ```
//!
//! The same script runs through the CLI, provided its config enables `run_command` with `mkdir`
//! and `ls` allowed:
//! `stepwise run --script examples/scripts/scaffold_project.json "Set up a Python REST API project: …"`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stepwise::Stepwise;
use stepwise::llm::scripted::ScriptedModel;
use stepwise::run::{RunEvent, RunResult, RunStatus};
use stepwise::tools::builtin_registry;
use stepwise::tools::config::{HttpGetConfig, RunCommandConfig, ToolsConfig};

/// The task the script answers.
pub const TASK: &str = "Set up a Python REST API project: create directory structure, install dependencies, \
                        write a Dockerfile, and generate a README";

/// Where the script lives.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scripts/scaffold_project.json");

/// The built-in tools this example enables: files, and `run_command` for `mkdir` and `ls` only.
/// `http_get` is off: the example runs offline.
pub fn tools_config() -> ToolsConfig {
    ToolsConfig {
        run_command: RunCommandConfig {
            enabled: true,
            allow: vec!["mkdir".into(), "ls".into()],
            ..RunCommandConfig::default()
        },
        http_get: HttpGetConfig { enabled: false, ..HttpGetConfig::default() },
        ..ToolsConfig::default()
    }
}

/// What a scaffolding run produced.
pub struct Scaffold {
    /// The run's result.
    pub result: RunResult,
    /// Its events, in order.
    pub events: Vec<RunEvent>,
    /// The run's workspace: where the project was written.
    pub project: PathBuf,
}

/// Runs the scaffolding task with workspaces under `workspace_root`, handing each event to
/// `on_event` as it happens.
pub async fn scaffold_project(
    workspace_root: &Path,
    on_event: impl FnMut(&RunEvent),
) -> Result<Scaffold, Box<dyn std::error::Error>> {
    let model = ScriptedModel::from_file(SCRIPT.as_ref())?;
    let runtime = Stepwise::builder()
        .model(Arc::new(model))
        .tools(builtin_registry(&tools_config()))
        .workspace_root(workspace_root)
        .build()
        .await?;
    let (result, events) = common::drive(&runtime, TASK, on_event).await?;
    runtime.shutdown().await;
    let project = workspace_root.join(result.id.as_str());
    Ok(Scaffold { result, events, project })
}

/// Every file under `dir`, relative, sorted, with its size.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            if path.is_dir() {
                out.push((format!("{rel}/"), 0));
                walk(root, &path, out);
            } else {
                out.push((rel, entry.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => tempfile::Builder::new().prefix("stepwise-scaffold-").tempdir()?.keep(),
    };
    let scaffold = scaffold_project(&root, common::print_event).await?;
    common::print_summary(&scaffold.result);
    println!("\nproject written to {}:", scaffold.project.display());
    for (path, size) in tree(&scaffold.project) {
        if path.ends_with('/') {
            println!("  {path}");
        } else {
            println!("  {path}  ({size} bytes)");
        }
    }
    if scaffold.result.status != RunStatus::Completed {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stepwise::plan::StepStatus;
    use stepwise::run::EventKind;

    use super::*;

    fn at(events: &[RunEvent], name: &str, id: &str) -> u64 {
        events
            .iter()
            .find(|e| {
                e.kind.name() == name
                    && matches!(&e.kind,
                        EventKind::StepStarted { step, .. } | EventKind::StepCompleted { step, .. }
                            if step.as_str() == id)
            })
            .unwrap_or_else(|| panic!("no {name} event for {id}"))
            .seq
    }

    fn read(project: &Path, rel: &str) -> String {
        std::fs::read_to_string(project.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    #[tokio::test]
    async fn the_project_is_really_written_to_the_run_workspace() {
        let root = tempfile::tempdir().unwrap();
        let Scaffold { result, events, project } = scaffold_project(root.path(), |_| {}).await.unwrap();
        assert_eq!(result.status, RunStatus::Completed, "{result:#?}");
        assert_eq!(project, root.path().join(result.id.as_str()));

        // Every tool call, mkdir and ls included, succeeded.
        let returned: Vec<(bool, &str)> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ToolReturned { ok, output, .. } => Some((*ok, output.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(returned.len(), 8, "{returned:#?}");
        assert!(returned.iter().all(|(ok, _)| *ok), "{returned:#?}");
        assert_eq!(result.usage.tool_calls, 8);

        // The directories made by mkdir, and the files with their content.
        assert!(project.join("app").is_dir());
        assert!(project.join("tests").is_dir());
        assert!(project.join("app/__init__.py").is_file());
        let main_py = read(&project, "app/main.py");
        assert!(main_py.contains("from fastapi import FastAPI") && main_py.contains("@app.get(\"/health\")"));
        assert!(read(&project, "tests/test_main.py").contains("from app.main import app"));
        let requirements = read(&project, "requirements.txt");
        for dep in ["fastapi", "uvicorn", "pydantic", "pytest"] {
            assert!(requirements.lines().any(|l| l.starts_with(dep)), "{dep} missing:\n{requirements}");
        }
        let dockerfile = read(&project, "Dockerfile");
        assert!(dockerfile.starts_with("FROM python:3.12-slim\n"), "{dockerfile}");
        assert!(dockerfile.contains("pip install --no-cache-dir -r requirements.txt"));
        assert!(dockerfile.contains(r#"CMD ["uvicorn", "app.main:app""#));
        let readme = read(&project, "README.md");
        assert!(readme.starts_with("# items-api") && readme.contains("docker build -t items-api ."));

        // `ls -R` ran in the workspace, after the other steps had written their files.
        let ls = returned.iter().find(|(_, out)| out.contains("app:")).expect("the ls -R observation");
        for name in ["Dockerfile", "requirements.txt", "__init__.py", "main.py", "test_main.py"] {
            assert!(ls.1.contains(name), "ls output lacks {name}: {}", ls.1);
        }

        // Shape of the run: structure, then dependencies and dockerfile, then readme.
        let done_structure = at(&events, "StepCompleted", "structure");
        for id in ["dependencies", "dockerfile"] {
            assert!(
                at(&events, "StepStarted", id) > done_structure,
                "{id} started before structure was done"
            );
        }
        let start_readme = at(&events, "StepStarted", "readme");
        for id in ["structure", "dependencies", "dockerfile"] {
            assert!(start_readme > at(&events, "StepCompleted", id), "readme started before {id} was done");
        }
        for step in &result.plan.steps {
            assert_eq!(step.status, StepStatus::Completed, "{step:#?}");
        }
        let deps_output = result.plan.steps[1].output.as_deref().unwrap();
        assert!(deps_output.contains("requirements.txt") && deps_output.contains("offline"), "{deps_output}");
        assert!(result.final_output.as_deref().unwrap().contains("README.md"));
    }

    #[tokio::test]
    async fn run_command_stays_limited_to_the_allowlist() {
        let tools = builtin_registry(&tools_config());
        assert_eq!(tools.names(), ["list_dir", "read_file", "run_command", "write_file"]);
        let dir = tempfile::tempdir().unwrap();
        let ctx = stepwise::tools::ToolContext::standalone(dir.path());
        let run = tools.get("run_command").unwrap();
        let denied = run.call(serde_json::json!({"program": "rm", "args": ["-rf", "."]}), &ctx).await;
        assert!(matches!(denied, Err(stepwise::tools::ToolError::Denied(_))), "{denied:?}");
        run.call(serde_json::json!({"program": "mkdir", "args": ["made"]}), &ctx).await.unwrap();
        assert!(dir.path().join("made").is_dir());
    }
}
