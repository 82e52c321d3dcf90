//! What the MCP tests share: where the reference servers are (installed by
//! `scripts/deps/mcp.sh`), and the Python streamable HTTP test server.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stepwise::tools::mcp::McpServerConfig;

/// `tests/mcp`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp")
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/deps/mcp.sh (it installs the MCP servers and the Python `mcp` package the MCP tests use)",
        path.display()
    );
    path
}

/// A binary of `tests/mcp/node_modules/.bin`.
pub fn node_bin(name: &str) -> String {
    require(dir().join("node_modules/.bin").join(name)).to_string_lossy().into_owned()
}

/// The virtualenv's Python, which has the `mcp` package.
pub fn python() -> String {
    require(dir().join(".venv/bin/python")).to_string_lossy().into_owned()
}

/// `@modelcontextprotocol/server-everything` over stdio.
pub fn everything(name: &str) -> McpServerConfig {
    McpServerConfig::stdio(name, &node_bin("mcp-server-everything"), &["stdio"])
}

/// `@modelcontextprotocol/server-filesystem` over stdio, confined to `root`.
pub fn filesystem(name: &str, root: &std::path::Path) -> McpServerConfig {
    McpServerConfig::stdio(name, &node_bin("mcp-server-filesystem"), &[&root.to_string_lossy()])
}

/// A free loopback port (bound and released: good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Python test server (`tests/mcp/http_server.py`), killed when dropped.
pub struct HttpServer {
    pub port: u16,
    bad: bool,
    child: Option<Child>,
}

impl HttpServer {
    /// Starts it on a free port and waits until it accepts connections.
    pub fn start(bad: bool) -> Self {
        let mut s = Self { port: free_port(), bad, child: None };
        s.restart();
        s
    }

    /// Its endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Kills it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let script = dir().join("http_server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script).arg("--port").arg(self.port.to_string()).stdout(Stdio::null()).stderr(Stdio::null());
        if self.bad {
            cmd.arg("--bad");
        }
        self.child = Some(cmd.spawn().expect("start tests/mcp/http_server.py"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test MCP server did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.kill();
    }
}
