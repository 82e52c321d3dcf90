//! Child processes of the `serve` scenario: the real `stepwise serve` binary and, when asked, the
//! fake model server; and what /proc says about a process (CPU time, peak RSS).

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Lines of a child's stderr kept for error messages.
const TAIL_LINES: usize = 30;
/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running child that is killed when dropped (so a failing bench leaves nothing behind), with
/// the base URL it printed and the last lines of its stderr.
pub(super) struct Spawned {
    child: Child,
    /// `http://ADDR` as the child printed it.
    pub url: String,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Spawned {
    /// The child's process id (None once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines the child wrote to stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Asks the child to stop (SIGTERM: `serve` drains and exits cleanly), then kills it if it
    /// has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Kills the child at once (SIGKILL, as `kill -9`: no drain, no cleanup) and reaps it.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing the child with SIGKILL")
    }
}

/// Where a spawned child prints the line with its address.
#[derive(Clone, Copy)]
pub(super) enum AddressOn {
    Stdout,
    Stderr,
}

/// Starts `command` (killed on drop) and waits until it prints a line containing `marker`
/// followed by `http://ADDR`; the rest of its output is drained in the background.
pub(super) async fn spawn(mut command: Command, marker: &str, on: AddressOn) -> anyhow::Result<Spawned> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().with_context(|| format!("starting {:?}", command.as_std()))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (found, address) = tokio::sync::oneshot::channel();
    let mut waiter = Some((marker.to_owned(), found));
    let mut waiter_on = |here: bool| if here { waiter.take() } else { None };
    if let Some(out) = stdout {
        tokio::spawn(drain(out, waiter_on(matches!(on, AddressOn::Stdout)), None));
    }
    if let Some(err) = stderr {
        tokio::spawn(drain(err, waiter_on(matches!(on, AddressOn::Stderr)), Some(tail.clone())));
    }
    let mut spawned = Spawned { child, url: String::new(), tail };
    match tokio::time::timeout(START_TIMEOUT, address).await {
        Ok(Ok(url)) => {
            spawned.url = url;
            Ok(spawned)
        }
        _ => {
            let status = spawned.child.try_wait().ok().flatten();
            anyhow::bail!(
                "{:?} did not print its address (exit status {status:?}); its stderr:\n{}",
                command.as_std(),
                spawned.stderr_tail()
            )
        }
    }
}

/// Who waits for the address line: the marker to look for and where to send the URL.
type AddressWaiter = (String, tokio::sync::oneshot::Sender<String>);

/// Reads a child's output line by line until it closes: hands the address line to `waiter`, keeps
/// the last lines in `tail`. Reading to the end also keeps the child from blocking on a full pipe.
async fn drain(
    out: impl AsyncRead + Unpin,
    mut waiter: Option<AddressWaiter>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(url) = waiter.as_ref().and_then(|(marker, _)| address_after(&line, marker)) {
            if let Some((_, tx)) = waiter.take() {
                let _ = tx.send(url);
            }
        }
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// `http://ADDR` from a line containing `marker` then that URL (ended by a space or the line).
fn address_after(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let start = rest.find("http://")?;
    let url = rest[start..].split_whitespace().next()?;
    Some(url.trim_end_matches('/').to_owned())
}

/// `exe serve` (the real stepwise binary) on a free loopback port with the default config: run in
/// `dir` (so no `config/stepwise.toml` is found), with no `STEPWISE_*` variable but those of
/// `env`, its data in `dir`, the openai provider at `base_url` (`…/v1`). `config` is passed on
/// when given.
pub(super) async fn start_serve(
    exe: &Path,
    dir: &Path,
    base_url: &str,
    model: &str,
    config: Option<&Path>,
    env: &[(&str, String)],
) -> anyhow::Result<Spawned> {
    let mut command = Command::new(exe);
    command
        .current_dir(dir)
        .args(["serve", "--bind", "127.0.0.1:0", "--provider", "openai", "--model", model, "--data-dir"])
        .arg(dir.join("data"))
        .env("OPENAI_BASE_URL", base_url);
    if let Some(config) = config {
        command.arg("--config").arg(std::path::absolute(config)?);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STEPWISE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    spawn(command, "stepwise listening on", AddressOn::Stderr).await
}

/// The fake model server binary at `path`, on a free loopback port, answering after `latency`.
pub(super) async fn start_fake_server(path: &Path, latency: Duration) -> anyhow::Result<Spawned> {
    let mut command = Command::new(path);
    command.args(["--bind", "127.0.0.1:0", "--latency-ms", &latency.as_millis().to_string()]);
    spawn(command, "listening on", AddressOn::Stdout).await
}

/// A process's CPU time (user + system, all its threads) in microseconds, from
/// `/proc/<pid>/stat` (`pid` may be `self`); None where /proc is unavailable.
pub(super) fn cpu_time_us(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    Some((utime + stime) * 1_000_000 / ticks_per_s)
}

/// A process's resident set size now and at its peak (`VmRSS`, `VmHWM`), in KiB, from
/// `/proc/<pid>/status` (`pid` may be `self`).
pub(super) fn rss_kib(pid: &str) -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_after_the_marker() {
        let line = "stepwise listening on http://127.0.0.1:4321 (data dir /tmp/x, resumed 0 unfinished runs)";
        assert_eq!(address_after(line, "stepwise listening on").as_deref(), Some("http://127.0.0.1:4321"));
        assert_eq!(
            address_after("listening on http://127.0.0.1:8089/", "listening on").unwrap(),
            "http://127.0.0.1:8089"
        );
        assert_eq!(address_after("something else", "listening on"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        assert!(cpu_time_us("self").is_some());
        let (rss, peak) = rss_kib("self");
        assert!(rss.unwrap() > 0 && peak.unwrap() >= rss.unwrap());
    }
}
