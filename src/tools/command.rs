//! `run_command`: runs an allowlisted program (no shell) in the run's workspace.
//!
//! The model picks the program and its arguments, so the program must be a bare name on the
//! configured allowlist, is resolved on `PATH` (absolute entries only), and runs with the
//! workspace as its working directory, stdin closed, a trimmed environment, a timeout, and
//! capped output. A non-zero exit is an ordinary result (the model should see it and react);
//! only failing to start the program, a timeout or a cancel are errors.
//!
//! Programs burn local CPU, so however many steps run at once, at most
//! `tools.run_command.max_concurrent` programs run at a time (default: the number of CPUs);
//! further calls wait for a slot, which the timeout does not count.
//!
//! Only the program itself is killed on timeout or cancel: a background process it started is
//! not (that would need a process-group kill), but its hold on the output pipes cannot stall
//! the call, see [`PIPE_GRACE`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::RunCommandConfig;
use super::{Tool, ToolContext, ToolError, parse_args, schema_of};

/// How long to keep reading output after the program exits. A background child that inherited
/// the pipes would otherwise keep the call waiting for it.
pub const PIPE_GRACE: Duration = Duration::from_millis(500);

/// Variables kept from the runtime's environment (plus `LC_*` and the config's `pass_env`).
const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"];

/// Arguments of `run_command`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The program's bare name, e.g. `python3`; it must be on the allowed list.
    pub program: String,
    /// Its arguments, passed as-is (there is no shell: no globbing, pipes or redirection).
    #[serde(default)]
    pub args: Vec<String>,
}

/// `run_command`: runs an allowed program with arguments in the workspace and reports its exit
/// code, stdout and stderr. Clones share the limit on programs running at once.
#[derive(Debug, Clone)]
pub struct RunCommandTool {
    cfg: RunCommandConfig,
    description: String,
    /// One permit per program allowed to run at once.
    slots: Arc<Semaphore>,
}

impl RunCommandTool {
    /// A `run_command` tool with `cfg`'s allowlist, timeout, output cap and environment.
    pub fn new(cfg: RunCommandConfig) -> Self {
        let allowed = if cfg.allow.is_empty() { "none".to_owned() } else { cfg.allow.join(", ") };
        let description = format!(
            "Runs a program (no shell) with the workspace as working directory and returns its exit \
             code, stdout and stderr. Allowed programs: {allowed}."
        );
        let slots = Arc::new(Semaphore::new(cfg.concurrency_limit()));
        Self { cfg, description, slots }
    }

    /// Waits for a slot to run a program; `None` if the call is cancelled first.
    async fn slot(&self, ctx: &ToolContext) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            // The semaphore is never closed, so this only fails if it were.
            permit = self.slots.clone().acquire_owned() => permit.ok(),
            () = ctx.cancel.cancelled() => None,
        }
    }

    fn check_program(&self, program: &str) -> Result<(), ToolError> {
        if program.is_empty() {
            return Err(ToolError::InvalidArguments("run_command: \"program\" is empty".into()));
        }
        if program.contains(['/', '\\', '\0']) || program == "." || program == ".." {
            return Err(ToolError::Denied(format!(
                "run_command: program {program:?} must be a bare name such as \"python3\", not a path"
            )));
        }
        if !self.cfg.allow.iter().any(|a| a == program) {
            let allowed =
                if self.cfg.allow.is_empty() { "none".to_owned() } else { self.cfg.allow.join(", ") };
            return Err(ToolError::Denied(format!(
                "run_command: program {program:?} is not allowed (allowed: {allowed})"
            )));
        }
        Ok(())
    }

    fn environment(&self) -> Vec<(OsString, OsString)> {
        std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.to_string_lossy();
                BASE_ENV.contains(&k.as_ref())
                    || k.starts_with("LC_")
                    || self.cfg.pass_env.iter().any(|p| *p == k)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Tool for RunCommandTool {
    fn name(&self) -> &str {
        "run_command"
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> serde_json::Value {
        schema_of::<RunCommandArgs>()
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let args: RunCommandArgs = parse_args(args)?;
        self.check_program(&args.program)?;
        let program = find_on_path(&args.program).ok_or_else(|| {
            ToolError::Failed(format!("run_command: program {:?} was not found on PATH", args.program))
        })?;
        tokio::fs::create_dir_all(&ctx.workspace).await.map_err(|e| {
            ToolError::Failed(format!(
                "run_command: cannot create the workspace {}: {e}",
                ctx.workspace.display()
            ))
        })?;
        if ctx.cancel.is_cancelled() {
            return Err(ToolError::Cancelled);
        }
        // Held until the program is reaped, so its slot is free only once it is gone.
        let _slot = self.slot(ctx).await.ok_or(ToolError::Cancelled)?;

        let mut child = Command::new(&program)
            .args(&args.args)
            .current_dir(&ctx.workspace)
            .env_clear()
            .envs(self.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ToolError::Failed(format!("run_command: cannot start {:?}: {e}", args.program)))?;
        let timeout = Duration::from_secs(self.cfg.timeout_secs);
        let cap = self.cfg.max_output_bytes;

        enum Outcome {
            Finished(std::io::Result<Finished>),
            TimedOut,
            Cancelled,
        }
        let outcome = tokio::select! {
            r = run_to_end(&mut child, cap) => Outcome::Finished(r),
            _ = tokio::time::sleep(timeout) => Outcome::TimedOut,
            _ = ctx.cancel.cancelled() => Outcome::Cancelled,
        };
        match outcome {
            Outcome::Finished(r) => {
                let done = r.map_err(|e| {
                    ToolError::Failed(format!("run_command: waiting for {:?} failed: {e}", args.program))
                })?;
                Ok(done.render())
            }
            Outcome::TimedOut => {
                kill(&mut child).await;
                Err(ToolError::Timeout(timeout))
            }
            Outcome::Cancelled => {
                kill(&mut child).await;
                Err(ToolError::Cancelled)
            }
        }
    }
}

/// Kills and reaps the child; `kill_on_drop` would kill it too, but reaping here means the
/// process is really gone when the error is returned.
async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// The first executable `name` in an absolute `PATH` entry. Relative entries (`.`, empty) are
/// skipped: they would resolve against the runtime's cwd, not anything the config vouches for.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Output of one stream: the first `cap` bytes, and how many more were dropped.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    /// Reads `stream` to its end, keeping at most `cap` bytes. It keeps draining past the cap so
    /// the program never blocks on a full pipe.
    async fn pump(&mut self, stream: Option<impl AsyncRead + Unpin>, cap: usize) {
        let Some(mut stream) = stream else { return };
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let room = cap.saturating_sub(self.kept.len()).min(n);
                    self.kept.extend_from_slice(&buf[..room]);
                    self.dropped += (n - room) as u64;
                }
            }
        }
    }

    fn render(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("[truncated {} bytes]", self.dropped));
        }
        if text.is_empty() { "(empty)".to_owned() } else { text }
    }
}

/// A program that ran to its end.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Captured,
    stderr: Captured,
    /// Output pipes were still open [`PIPE_GRACE`] after the exit (a background process).
    pipes_held: bool,
}

impl Finished {
    fn render(&self) -> String {
        let mut out = match self.status.code() {
            Some(code) => format!("exit code: {code}\n"),
            None => format!("exit: terminated by a signal ({})\n", describe_signal(&self.status)),
        };
        out.push_str("--- stdout ---\n");
        out.push_str(self.stdout.render().trim_end_matches('\n'));
        out.push_str("\n--- stderr ---\n");
        out.push_str(self.stderr.render().trim_end_matches('\n'));
        out.push('\n');
        if self.pipes_held {
            out.push_str(
                "[note: a background process kept the output open; output after the exit was not read]\n",
            );
        }
        out
    }
}

fn describe_signal(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("signal {sig}");
        }
    }
    status.to_string()
}

/// Waits for the child while reading both pipes concurrently.
async fn run_to_end(child: &mut Child, cap: usize) -> std::io::Result<Finished> {
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let mut stdout = Captured::default();
    let mut stderr = Captured::default();
    let mut pipes_held = false;
    let status = {
        let reading = async {
            tokio::join!(stdout.pump(stdout_pipe, cap), stderr.pump(stderr_pipe, cap));
        };
        tokio::pin!(reading);
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                if tokio::time::timeout(PIPE_GRACE, &mut reading).await.is_err() {
                    pipes_held = true;
                }
                status
            }
            () = &mut reading => child.wait().await?,
        }
    };
    Ok(Finished { status, stdout, stderr, pipes_held })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use serde_json::json;

    fn ctx(workspace: &Path) -> ToolContext {
        ToolContext::standalone(workspace)
    }

    fn tool(allow: &[&str]) -> RunCommandTool {
        RunCommandTool::new(RunCommandConfig {
            enabled: true,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            timeout_secs: 10,
            max_output_bytes: 1000,
            pass_env: Vec::new(),
            max_concurrent: None,
        })
    }

    fn limited(allow: &[&str], max_concurrent: usize) -> RunCommandTool {
        let mut cfg = tool(allow).cfg;
        cfg.max_concurrent = Some(max_concurrent);
        RunCommandTool::new(cfg)
    }

    async fn run(t: &RunCommandTool, ws: &Path, program: &str, args: &[&str]) -> Result<String, ToolError> {
        t.call(json!({ "program": program, "args": args }), &ctx(ws)).await
    }

    #[tokio::test]
    async fn runs_a_program_and_reports_exit_code_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&tool(&["echo"]), dir.path(), "echo", &["hello", "world"]).await.unwrap();
        assert_eq!(out, "exit code: 0\n--- stdout ---\nhello world\n--- stderr ---\n(empty)\n");
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&tool(&["echo"]), dir.path(), "echo", &["$HOME", "*", "a;b"]).await.unwrap();
        assert!(out.contains("--- stdout ---\n$HOME * a;b\n"), "{out}");
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_result_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            run(&tool(&["sh"]), dir.path(), "sh", &["-c", "echo out; echo oops >&2; exit 3"]).await.unwrap();
        assert_eq!(out, "exit code: 3\n--- stdout ---\nout\n--- stderr ---\noops\n");
    }

    #[tokio::test]
    async fn runs_in_the_workspace_and_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("fresh");
        let out = run(&tool(&["sh"]), &ws, "sh", &["-c", "echo made > marker.txt; pwd"]).await.unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("marker.txt")).unwrap(), "made\n");
        let canonical = std::fs::canonicalize(&ws).unwrap();
        assert!(out.contains(&format!("{}\n", canonical.display())), "{out}");
    }

    #[tokio::test]
    async fn programs_not_on_the_allowlist_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&tool(&["echo"]), dir.path(), "sh", &["-c", "true"]).await;
        assert!(
            matches!(&r, Err(ToolError::Denied(m)) if m.contains("\"sh\"") && m.contains("allowed: echo")),
            "{r:?}"
        );
        let r = run(&tool(&[]), dir.path(), "echo", &[]).await;
        assert!(matches!(&r, Err(ToolError::Denied(m)) if m.contains("allowed: none")), "{r:?}");
    }

    #[tokio::test]
    async fn paths_are_denied_even_when_listed() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(&["/bin/echo", "./echo", "..", "echo"]);
        for program in ["/bin/echo", "./echo", "..", "bin/echo"] {
            let r = run(&t, dir.path(), program, &["x"]).await;
            assert!(matches!(&r, Err(ToolError::Denied(m)) if m.contains("bare name")), "{program}: {r:?}");
        }
    }

    #[tokio::test]
    async fn missing_program_is_a_failure_not_a_denial() {
        let dir = tempfile::tempdir().unwrap();
        let name = "stepwise-no-such-program-7f3a";
        let r = run(&tool(&[name]), dir.path(), name, &[]).await;
        assert!(matches!(&r, Err(ToolError::Failed(m)) if m.contains("not found on PATH")), "{r:?}");
    }

    #[tokio::test]
    async fn stdin_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = run(&tool(&["cat"]), dir.path(), "cat", &[]).await.unwrap();
        assert!(out.starts_with("exit code: 0\n--- stdout ---\n(empty)"), "{out}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn output_is_capped_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let script = "head -c 5000 /dev/zero | tr '\\0' a; head -c 1500 /dev/zero | tr '\\0' b >&2";
        let out = run(&tool(&["sh"]), dir.path(), "sh", &["-c", script]).await.unwrap();
        let expected_stdout = format!("--- stdout ---\n{}\n[truncated 4000 bytes]\n", "a".repeat(1000));
        let expected_stderr = format!("--- stderr ---\n{}\n[truncated 500 bytes]\n", "b".repeat(1000));
        assert!(out.contains(&expected_stdout), "{out}");
        assert!(out.contains(&expected_stderr), "{out}");
    }

    #[tokio::test]
    async fn timeout_kills_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tool(&["sleep"]);
        t.cfg.timeout_secs = 1;
        let started = Instant::now();
        let r = run(&t, dir.path(), "sleep", &["30"]).await;
        assert_eq!(r, Err(ToolError::Timeout(Duration::from_secs(1))));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn cancellation_stops_the_program_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(&["sh"]);
        let c = ctx(dir.path());
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        // The program writes a marker if it survives long enough to prove it was not killed.
        let r = t.call(json!({"program": "sh", "args": ["-c", "sleep 2; echo alive > survived"]}), &c).await;
        assert_eq!(r, Err(ToolError::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!dir.path().join("survived").exists(), "the program kept running after cancel");
    }

    #[tokio::test]
    async fn already_cancelled_context_does_not_start_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        c.cancel.cancel();
        let r = tool(&["sh"]).call(json!({"program": "sh", "args": ["-c", "echo x > ran"]}), &c).await;
        assert_eq!(r, Err(ToolError::Cancelled));
        assert!(!dir.path().join("ran").exists());
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipes_does_not_stall_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = run(&tool(&["sh"]), dir.path(), "sh", &["-c", "sleep 3 & echo started"]).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(out.starts_with("exit code: 0\n--- stdout ---\nstarted\n"), "{out}");
        assert!(out.contains("background process"), "{out}");
    }

    #[tokio::test]
    async fn environment_is_trimmed_to_the_safe_set() {
        // cargo sets CARGO_PKG_NAME for test binaries; it stands in for a secret like an API key.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some(), "precondition: cargo sets CARGO_PKG_NAME");
        let dir = tempfile::tempdir().unwrap();
        let out = run(&tool(&["env"]), dir.path(), "env", &[]).await.unwrap();
        assert!(!out.contains("CARGO_PKG_NAME"), "{out}");
        assert!(out.contains("\nPATH="), "{out}");
        let mut t = tool(&["env"]);
        t.cfg.pass_env = vec!["CARGO_PKG_NAME".into()];
        let out = run(&t, dir.path(), "env", &[]).await.unwrap();
        assert!(out.contains("CARGO_PKG_NAME=stepwise"), "{out}");
    }

    #[tokio::test]
    async fn bad_arguments_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(&["echo"]);
        let c = ctx(dir.path());
        let r = t.call(json!({"program": "echo", "shell": true}), &c).await;
        assert!(matches!(&r, Err(ToolError::InvalidArguments(m)) if m.contains("shell")), "{r:?}");
        let r = t.call(json!({"program": "echo", "args": "a b"}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(_))));
        let r = t.call(json!({"program": ""}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(_))));
        // args may be omitted.
        assert!(t.call(json!({"program": "echo"}), &c).await.unwrap().starts_with("exit code: 0"));
    }

    /// Each program holds the directory `held` while it runs: a second program running at the
    /// same time could not create it, and would say so.
    #[tokio::test]
    async fn programs_beyond_max_concurrent_wait_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let t = limited(&["sh"], 1);
        let script = "mkdir held || { echo overlap; exit 0; }; sleep 0.3; rmdir held; echo alone";
        let other = t.clone();
        let args = ["-c", script];
        let (a, b) = tokio::join!(run(&t, dir.path(), "sh", &args), run(&other, dir.path(), "sh", &args));
        for out in [a.unwrap(), b.unwrap()] {
            assert!(out.contains("alone") && !out.contains("overlap"), "{out}");
        }
    }

    /// The check above can see overlap: with two slots, two programs that each wait for the
    /// other (10 s at most) meet.
    #[tokio::test]
    async fn programs_within_max_concurrent_run_together() {
        let dir = tempfile::tempdir().unwrap();
        let t = limited(&["sh"], 2);
        let script = "touch \"$0\"; i=0; while [ ! -e \"$1\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
                      [ -e \"$1\" ] && echo met";
        let (first, second) = (["-c", script, "a", "b"], ["-c", script, "b", "a"]);
        let (a, b) = tokio::join!(run(&t, dir.path(), "sh", &first), run(&t, dir.path(), "sh", &second));
        for out in [a.unwrap(), b.unwrap()] {
            assert!(out.contains("--- stdout ---\nmet\n"), "{out}");
        }
    }

    #[tokio::test]
    async fn a_call_cancelled_while_waiting_for_a_slot_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let t = limited(&["sh"], 1);
        let _taken = t.slots.clone().acquire_owned().await.unwrap();
        let c = ctx(dir.path());
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let r = t.call(json!({"program": "sh", "args": ["-c", "echo x > ran"]}), &c).await;
        assert_eq!(r, Err(ToolError::Cancelled));
        assert!(!dir.path().join("ran").exists());
    }

    #[test]
    fn the_limit_defaults_to_the_cpus() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(tool(&[]).slots.available_permits(), cpus);
        assert_eq!(limited(&[], 3).slots.available_permits(), 3);
    }

    #[test]
    fn description_lists_the_allowed_programs() {
        let t = tool(&["python3", "ls"]);
        assert!(t.description().contains("Allowed programs: python3, ls."));
        assert!(!t.idempotent());
        assert_eq!(t.parameters()["required"], json!(["program"]));
    }
}
