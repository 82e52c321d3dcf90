//! Starting the real `stepwise serve` binary in a test: spawn it, wait for the line that says
//! where it listens, keep its stderr drained.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Spawns `command` (a `stepwise serve … --bind 127.0.0.1:0` prepared by the test) with stderr
/// piped and stdin and stdout closed, and returns the child with the base URL it announced.
pub fn spawn_serve(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stepwise serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let url = loop {
        let line = lines.next().expect("serve exited before listening").expect("stderr is text");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("an address after 'listening on'").to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}
