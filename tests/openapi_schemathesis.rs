//! The OpenAPI document checked by a real OpenAPI tool: schemathesis (installed by
//! `scripts/deps/schemathesis.sh`) reads `/openapi.json` from the real `stepwise serve` binary
//! and fuzzes every operation from it, with the bearer token, on the scripted model (no network
//! but loopback). It fails on any server error, response that breaks the document (schema,
//! status code, content type, headers), schema-valid request refused or invalid one accepted.
//! Checks that do not apply to one operation are turned off for it, with why, in
//! `tests/schemathesis.toml`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod support_serve;

const TOKEN: &str = "schemathesis-token-0123456789";
/// Test cases per operation and phase: enough to reach every field, few enough for about a
/// minute on two cores.
const MAX_EXAMPLES: &str = "100";
/// A fixed seed: a failure in CI reproduces locally with the same command.
const SEED: &str = "20261201";
/// Longest the whole schemathesis run may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(600);

/// The `st` executable: `$STEPWISE_SCHEMATHESIS`, or where `scripts/deps/schemathesis.sh`
/// installs it.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("STEPWISE_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    cache.join("stepwise/venv-schemathesis/bin/st")
}

/// The real binary on the scripted model: every run plans one step and completes.
struct Serve(Child);

impl Serve {
    fn start(dir: &Path) -> (Serve, String) {
        let step = json!({"id": "s1", "description": "answer", "expected_outcome": "an answer", "tool": null, "depends_on": []});
        let script = json!({
            "planner": [{"json": {"goal": "answer", "steps": [step]}}],
            "steps": {"s1": ["step output"]},
            "synthesizer": ["final answer"]
        });
        std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", "data", "--script", "script.json"])
            .current_dir(dir)
            .env("STEPWISE_API_TOKENS", TOKEN);
        let (child, url) = support_serve::spawn_serve(command);
        (Serve(child), url)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to completion or `DEADLINE`, returning its exit success and its output.
fn run_bounded(mut cmd: Command) -> (bool, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start schemathesis");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if began.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = format!("{}\n{}", out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) => (s.success(), output),
        None => (false, format!("schemathesis did not finish within {DEADLINE:?}\n{output}")),
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_breaking_the_document() {
    let st = schemathesis();
    assert!(
        st.is_file(),
        "schemathesis is not installed at {}: run scripts/deps/schemathesis.sh (or set STEPWISE_SCHEMATHESIS)",
        st.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let (_serve, url) = Serve::start(tmp.path());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");

    let mut cmd = Command::new(&st);
    cmd.arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{url}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        // No `--checks`: schemathesis 4 runs every check by default (not_a_server_error,
        // status_code / content_type / response_headers / response_schema conformance,
        // negative_data_rejection, positive_data_acceptance, missing_required_header,
        // unsupported_method, use_after_free, ensure_resource_availability, ignored_auth…), and a
        // `--checks` list would override the per-operation exclusions of the config file.
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED, "--workers", "2"])
        .args(["--request-timeout", "30", "--no-color"])
        // Its example database (.hypothesis) goes in the temporary directory, not the repository.
        .current_dir(tmp.path())
        .stdin(Stdio::null());
    let began = Instant::now();
    let (ok, output) = run_bounded(cmd);
    eprintln!("schemathesis ran {:.0?}:\n{output}", began.elapsed());
    assert!(ok, "schemathesis reported problems with {url}/openapi.json:\n{output}");
    // A run that tested nothing would pass too: every operation must have been exercised.
    let (selected, tested) = operations_tested(&output);
    assert!(
        selected > 0 && tested == selected,
        "schemathesis tested {tested} of {selected} operations:\n{output}"
    );
}

/// The `Selected: n/total` and `Tested: n` counts of schemathesis's summary.
fn operations_tested(output: &str) -> (usize, usize) {
    let after = |label: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let total = after("Selected:").rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let tested = after("Tested:").parse().unwrap_or(0);
    (total, tested)
}
