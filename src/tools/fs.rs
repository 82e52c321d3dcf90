//! `read_file`, `write_file` and `list_dir`: file access confined to the run's workspace.
//!
//! Paths come from the model, so every path is checked before it is touched: it must be
//! relative, must not contain `..`, and the deepest part of it that already exists is
//! canonicalized (resolving symlinks) and must stay under the canonical workspace. That last
//! check is what stops a symlink inside the workspace that points outside it. `write_file` also
//! refuses to write through a symlink in the final component, even one pointing inside.
//!
//! The checks guard against what exists when the call is made; a concurrent process racing to
//! swap a directory for a symlink between check and use is outside what they cover.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::config::FilesConfig;
use super::{Tool, ToolContext, ToolError, parse_args, schema_of};

/// Most entries `list_dir` shows; a huge directory would otherwise flood the model's context.
const MAX_LIST_ENTRIES: usize = 1000;

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// Path of the file, relative to the workspace (e.g. `src/main.py`).
    pub path: String,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// Path of the file, relative to the workspace; missing parent directories are created.
    pub path: String,
    /// The file's full new content (UTF-8 text); an existing file is replaced.
    pub content: String,
}

/// Arguments of `list_dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDirArgs {
    /// Directory relative to the workspace; `""` or `"."` (the default) is the workspace itself.
    #[serde(default)]
    pub path: String,
}

/// `read_file`: returns a workspace file's text, up to `max_file_bytes`.
#[derive(Debug, Clone)]
pub struct ReadFileTool {
    max_file_bytes: usize,
}

impl ReadFileTool {
    /// A `read_file` tool with the size cap from `cfg`.
    pub fn new(cfg: &FilesConfig) -> Self {
        Self { max_file_bytes: cfg.max_file_bytes }
    }
}

/// `write_file`: creates or replaces a workspace file, up to `max_file_bytes`.
#[derive(Debug, Clone)]
pub struct WriteFileTool {
    max_file_bytes: usize,
}

impl WriteFileTool {
    /// A `write_file` tool with the size cap from `cfg`.
    pub fn new(cfg: &FilesConfig) -> Self {
        Self { max_file_bytes: cfg.max_file_bytes }
    }
}

/// `list_dir`: lists a workspace directory (name, kind, size), sorted by name.
#[derive(Debug, Clone, Default)]
pub struct ListDirTool;

impl ListDirTool {
    /// A `list_dir` tool.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait::async_trait]
impl Tool for ReadFileTool {
    fn name(&self) -> &str {
        "read_file"
    }
    fn description(&self) -> &str {
        "Reads a text file from the workspace and returns its content. \
         The path is relative to the workspace root."
    }
    fn parameters(&self) -> serde_json::Value {
        schema_of::<ReadFileArgs>()
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let args: ReadFileArgs = parse_args(args)?;
        let ws = workspace_root(&ctx.workspace).await?;
        let rel = relative_path(&args.path, false)?;
        let target = ws.join(&rel);
        let real = match tokio::fs::canonicalize(&target).await {
            Ok(real) => real,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Tell a dangling symlink (refused) from a plain missing file.
                confined(&ws, &target, &args.path).await?;
                return Err(ToolError::Failed(format!("read_file: {:?} does not exist", args.path)));
            }
            Err(e) => {
                return Err(ToolError::Failed(format!("read_file: cannot resolve {:?}: {e}", args.path)));
            }
        };
        if !real.starts_with(&ws) {
            return Err(escape_error("read_file", &args.path));
        }
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|e| ToolError::Failed(format!("read_file: cannot stat {:?}: {e}", args.path)))?;
        if meta.is_dir() {
            return Err(ToolError::Failed(format!(
                "read_file: {:?} is a directory; use list_dir to see its entries",
                args.path
            )));
        }
        if !meta.is_file() {
            // FIFOs and devices could block forever or never end.
            return Err(ToolError::Denied(format!("read_file: {:?} is not a regular file", args.path)));
        }
        let cap = self.max_file_bytes;
        if meta.len() > cap as u64 {
            return Err(too_big_error("read_file", &args.path, meta.len(), cap));
        }
        let file = tokio::fs::File::open(&real)
            .await
            .map_err(|e| ToolError::Failed(format!("read_file: cannot open {:?}: {e}", args.path)))?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // Read at most one byte past the cap so a file that grew after the stat is still caught.
        file.take(cap as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ToolError::Failed(format!("read_file: cannot read {:?}: {e}", args.path)))?;
        if bytes.len() > cap {
            return Err(too_big_error("read_file", &args.path, bytes.len() as u64, cap));
        }
        Ok(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => format!(
                "{}\n[note: {:?} is not valid UTF-8; invalid bytes were replaced with U+FFFD]",
                String::from_utf8_lossy(e.as_bytes()),
                args.path
            ),
        })
    }
}

#[async_trait::async_trait]
impl Tool for WriteFileTool {
    fn name(&self) -> &str {
        "write_file"
    }
    fn description(&self) -> &str {
        "Writes text to a file in the workspace, creating missing parent directories and \
         replacing any existing file. The path is relative to the workspace root."
    }
    fn parameters(&self) -> serde_json::Value {
        schema_of::<WriteFileArgs>()
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let args: WriteFileArgs = parse_args(args)?;
        let len = args.content.len();
        if len > self.max_file_bytes {
            return Err(ToolError::InvalidArguments(format!(
                "write_file: content for {:?} is {len} bytes, over the limit of {} bytes \
                 (tools.files.max_file_bytes)",
                args.path, self.max_file_bytes
            )));
        }
        let ws = workspace_root(&ctx.workspace).await?;
        let rel = relative_path(&args.path, false)?;
        let Some(file_name) = rel.file_name().map(ToOwned::to_owned) else {
            return Err(ToolError::InvalidArguments(format!(
                "write_file: {:?} does not name a file",
                args.path
            )));
        };
        let target = ws.join(&rel);
        match tokio::fs::symlink_metadata(&target).await {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ToolError::Denied(format!(
                    "write_file: {:?} is a symlink; writing through symlinks is not allowed",
                    args.path
                )));
            }
            Ok(meta) if meta.is_dir() => {
                return Err(ToolError::Failed(format!("write_file: {:?} is a directory", args.path)));
            }
            Ok(meta) if !meta.is_file() => {
                return Err(ToolError::Denied(format!("write_file: {:?} is not a regular file", args.path)));
            }
            _ => {}
        }
        let parent = target.parent().unwrap_or(&ws).to_path_buf();
        // Check before creating anything: create_dir_all would follow an escaping symlink.
        let parent = confined(&ws, &parent, &args.path).await?;
        tokio::fs::create_dir_all(&parent).await.map_err(|e| {
            ToolError::Failed(format!("write_file: cannot create the parent of {:?}: {e}", args.path))
        })?;
        let parent = confined(&ws, &parent, &args.path).await?;
        let dest = parent.join(file_name);
        if tokio::fs::symlink_metadata(&dest).await.is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ToolError::Denied(format!(
                "write_file: {:?} is a symlink; writing through symlinks is not allowed",
                args.path
            )));
        }
        tokio::fs::write(&dest, args.content.as_bytes())
            .await
            .map_err(|e| ToolError::Failed(format!("write_file: cannot write {:?}: {e}", args.path)))?;
        Ok(format!("wrote {len} bytes to {}", display_rel(&rel)))
    }
}

#[async_trait::async_trait]
impl Tool for ListDirTool {
    fn name(&self) -> &str {
        "list_dir"
    }
    fn description(&self) -> &str {
        "Lists a workspace directory: each entry's name, kind (file, dir, symlink) and size, \
         sorted by name. Use \".\" for the workspace root."
    }
    fn parameters(&self) -> serde_json::Value {
        schema_of::<ListDirArgs>()
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> Result<String, ToolError> {
        let args: ListDirArgs = parse_args(args)?;
        let ws = workspace_root(&ctx.workspace).await?;
        let rel = relative_path(&args.path, true)?;
        let target = ws.join(&rel);
        let real = match tokio::fs::canonicalize(&target).await {
            Ok(real) => real,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                confined(&ws, &target, &args.path).await?;
                return Err(ToolError::Failed(format!("list_dir: {:?} does not exist", args.path)));
            }
            Err(e) => {
                return Err(ToolError::Failed(format!("list_dir: cannot resolve {:?}: {e}", args.path)));
            }
        };
        if !real.starts_with(&ws) {
            return Err(escape_error("list_dir", &args.path));
        }
        if !real.is_dir() {
            return Err(ToolError::Failed(format!(
                "list_dir: {:?} is not a directory; use read_file for files",
                args.path
            )));
        }
        let mut dir = tokio::fs::read_dir(&real)
            .await
            .map_err(|e| ToolError::Failed(format!("list_dir: cannot read {:?}: {e}", args.path)))?;
        let mut entries = Vec::new();
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| ToolError::Failed(format!("list_dir: cannot read {:?}: {e}", args.path)))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            // symlink_metadata: describe links themselves, never what (possibly outside) they point to.
            let line = match tokio::fs::symlink_metadata(entry.path()).await {
                Ok(m) if m.file_type().is_symlink() => format!("symlink  {name}"),
                Ok(m) if m.is_dir() => format!("dir      {name}/"),
                Ok(m) if m.is_file() => format!("file     {name}  ({} bytes)", m.len()),
                Ok(_) => format!("other    {name}"),
                Err(_) => format!("?        {name}"),
            };
            entries.push((name, line));
        }
        entries.sort();
        let shown = display_rel(&rel);
        if entries.is_empty() {
            return Ok(format!("{shown}: empty directory"));
        }
        let total = entries.len();
        let mut out = format!("{shown}: {total} entries\n");
        for (_, line) in entries.iter().take(MAX_LIST_ENTRIES) {
            out.push_str(line);
            out.push('\n');
        }
        if total > MAX_LIST_ENTRIES {
            out.push_str(&format!("[… {} more entries not shown]\n", total - MAX_LIST_ENTRIES));
        }
        Ok(out)
    }
}

/// Creates the workspace if needed and returns its canonical path, the root every check uses.
async fn workspace_root(workspace: &Path) -> Result<PathBuf, ToolError> {
    tokio::fs::create_dir_all(workspace).await.map_err(|e| {
        ToolError::Failed(format!("cannot create the workspace {}: {e}", workspace.display()))
    })?;
    tokio::fs::canonicalize(workspace)
        .await
        .map_err(|e| ToolError::Failed(format!("cannot resolve the workspace {}: {e}", workspace.display())))
}

/// Checks the model's path lexically: relative, no `..`, no root or drive prefix. `.` parts are
/// dropped. An empty result (the workspace itself) is only accepted when `allow_root`.
fn relative_path(raw: &str, allow_root: bool) -> Result<PathBuf, ToolError> {
    if raw.contains('\0') {
        return Err(ToolError::InvalidArguments(format!("path {raw:?} contains a NUL byte")));
    }
    let mut rel = PathBuf::new();
    for part in Path::new(raw).components() {
        match part {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ToolError::Denied(format!(
                    "path {raw:?} contains \"..\"; paths must stay inside the workspace"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ToolError::Denied(format!(
                    "path {raw:?} is absolute; use a path relative to the workspace"
                )));
            }
        }
    }
    if rel.as_os_str().is_empty() && !allow_root {
        return Err(ToolError::InvalidArguments(format!(
            "path {raw:?} does not name a file in the workspace"
        )));
    }
    Ok(rel)
}

/// Resolves `path` (under `ws`, possibly not existing yet) by canonicalizing its deepest existing
/// ancestor, and refuses it if that leaves the workspace. Returns the resolved path.
async fn confined(ws: &Path, path: &Path, shown: &str) -> Result<PathBuf, ToolError> {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        // symlink_metadata, so a dangling symlink counts as existing and gets refused below.
        if tokio::fs::symlink_metadata(existing).await.is_ok() {
            break;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return Err(escape_error("", shown)),
        }
    }
    let real = tokio::fs::canonicalize(existing).await.map_err(|e| {
        ToolError::Denied(format!("path {shown:?} goes through a link that cannot be resolved ({e})"))
    })?;
    if !real.starts_with(ws) {
        return Err(escape_error("", shown));
    }
    Ok(missing.into_iter().rev().fold(real, |p, name| p.join(name)))
}

fn escape_error(tool: &str, shown: &str) -> ToolError {
    let prefix = if tool.is_empty() { String::new() } else { format!("{tool}: ") };
    ToolError::Denied(format!("{prefix}path {shown:?} resolves (through a symlink) to outside the workspace"))
}

fn too_big_error(tool: &str, shown: &str, len: u64, cap: usize) -> ToolError {
    ToolError::Failed(format!(
        "{tool}: {shown:?} is {len} bytes, over the limit of {cap} bytes (tools.files.max_file_bytes)"
    ))
}

fn display_rel(rel: &Path) -> String {
    if rel.as_os_str().is_empty() { ".".to_owned() } else { rel.display().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(workspace: &Path) -> ToolContext {
        ToolContext::standalone(workspace)
    }

    fn cfg(max: usize) -> FilesConfig {
        FilesConfig { enabled: true, max_file_bytes: max }
    }

    async fn read(ws: &Path, path: &str) -> Result<String, ToolError> {
        ReadFileTool::new(&cfg(1024)).call(json!({ "path": path }), &ctx(ws)).await
    }

    async fn write(ws: &Path, path: &str, content: &str) -> Result<String, ToolError> {
        WriteFileTool::new(&cfg(1024)).call(json!({ "path": path, "content": content }), &ctx(ws)).await
    }

    async fn list(ws: &Path, path: &str) -> Result<String, ToolError> {
        ListDirTool::new().call(json!({ "path": path }), &ctx(ws)).await
    }

    fn denied_mentioning(r: Result<String, ToolError>, needle: &str) {
        match r {
            Err(ToolError::Denied(msg)) => assert!(msg.contains(needle), "{msg:?} should mention {needle:?}"),
            other => panic!("expected Denied, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn write_then_read_round_trips_and_creates_parents() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        let out = write(ws, "a/b/c.txt", "hello\nworld").await.unwrap();
        assert_eq!(out, "wrote 11 bytes to a/b/c.txt");
        assert_eq!(std::fs::read_to_string(ws.join("a/b/c.txt")).unwrap(), "hello\nworld");
        assert_eq!(read(ws, "a/b/c.txt").await.unwrap(), "hello\nworld");
        assert_eq!(read(ws, "./a/./b/c.txt").await.unwrap(), "hello\nworld");
        write(ws, "a/b/c.txt", "replaced").await.unwrap();
        assert_eq!(read(ws, "a/b/c.txt").await.unwrap(), "replaced");
    }

    #[tokio::test]
    async fn workspace_is_created_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("not/yet");
        assert_eq!(list(&ws, "").await.unwrap(), ".: empty directory");
        assert!(ws.is_dir());
        let ws2 = dir.path().join("other");
        write(&ws2, "f", "x").await.unwrap();
        assert_eq!(std::fs::read_to_string(ws2.join("f")).unwrap(), "x");
    }

    #[tokio::test]
    async fn parent_components_and_absolute_paths_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        denied_mentioning(read(&ws, "../secret").await, "\"../secret\"");
        denied_mentioning(read(&ws, "a/../../secret").await, "..");
        denied_mentioning(write(&ws, "../evil", "x").await, "..");
        denied_mentioning(list(&ws, "..").await, "..");
        let abs = dir.path().join("secret").display().to_string();
        denied_mentioning(read(&ws, &abs).await, "absolute");
        denied_mentioning(write(&ws, "/tmp/evil", "x").await, "absolute");
        denied_mentioning(list(&ws, "/").await, "absolute");
        assert!(!dir.path().join("evil").exists());
    }

    #[tokio::test]
    async fn empty_path_is_invalid_for_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path(), "").await, Err(ToolError::InvalidArguments(_))));
        assert!(matches!(write(dir.path(), ".", "x").await, Err(ToolError::InvalidArguments(_))));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlink_escapes_are_denied_for_read_write_and_list() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        symlink(&outside, ws.join("out")).unwrap();
        symlink(outside.join("secret.txt"), ws.join("secret_link")).unwrap();

        denied_mentioning(read(&ws, "out/secret.txt").await, "outside the workspace");
        denied_mentioning(read(&ws, "secret_link").await, "\"secret_link\"");
        denied_mentioning(list(&ws, "out").await, "outside the workspace");
        denied_mentioning(write(&ws, "out/new.txt", "x").await, "outside the workspace");
        denied_mentioning(write(&ws, "out/deep/er/new.txt", "x").await, "outside the workspace");
        denied_mentioning(write(&ws, "secret_link", "overwritten").await, "symlink");
        assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).unwrap(), "secret");
        assert!(!outside.join("new.txt").exists());
        assert!(!outside.join("deep").exists(), "no directory may be created outside");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn dangling_and_inside_symlinks() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("real")).unwrap();
        std::fs::write(ws.join("real/f.txt"), "inside").unwrap();
        symlink(ws.join("real"), ws.join("alias")).unwrap();
        symlink(dir.path().join("nowhere/dir"), ws.join("dangling")).unwrap();

        // A link that stays inside the workspace is fine to read and list through…
        assert_eq!(read(&ws, "alias/f.txt").await.unwrap(), "inside");
        assert!(list(&ws, "alias").await.unwrap().contains("f.txt"));
        // …but a dangling one cannot be checked, so it is refused.
        denied_mentioning(write(&ws, "dangling/x.txt", "x").await, "\"dangling/x.txt\"");
        denied_mentioning(read(&ws, "dangling").await, "dangling");
        denied_mentioning(write(&ws, "dangling", "x").await, "symlink");
        assert!(!dir.path().join("nowhere").exists());
    }

    #[tokio::test]
    async fn size_caps_apply_to_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(ws.join("big.txt"), vec![b'a'; 2000]).unwrap();
        match read(ws, "big.txt").await {
            Err(ToolError::Failed(msg)) => {
                assert!(msg.contains("\"big.txt\"") && msg.contains("2000") && msg.contains("1024"), "{msg}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let exact = "b".repeat(1024);
        write(ws, "exact.txt", &exact).await.unwrap();
        assert_eq!(read(ws, "exact.txt").await.unwrap(), exact);
        match write(ws, "over.txt", &"c".repeat(1025)).await {
            Err(ToolError::InvalidArguments(msg)) => {
                assert!(msg.contains("1025") && msg.contains("max_file_bytes"))
            }
            other => panic!("expected InvalidArguments, got {other:?}"),
        }
        assert!(!ws.join("over.txt").exists());
    }

    #[tokio::test]
    async fn read_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::create_dir(ws.join("sub")).unwrap();
        match read(ws, "missing.txt").await {
            Err(ToolError::Failed(msg)) => assert!(msg.contains("\"missing.txt\" does not exist"), "{msg}"),
            other => panic!("expected Failed, got {other:?}"),
        }
        match read(ws, "sub").await {
            Err(ToolError::Failed(msg)) => assert!(msg.contains("is a directory"), "{msg}"),
            other => panic!("expected Failed, got {other:?}"),
        }
        match write(ws, "sub", "x").await {
            Err(ToolError::Failed(msg)) => assert!(msg.contains("is a directory"), "{msg}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn non_utf8_file_is_read_lossily_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bin"), [b'o', b'k', 0xff, b'!']).unwrap();
        let out = read(dir.path(), "bin").await.unwrap();
        assert!(out.starts_with("ok\u{FFFD}!"), "{out}");
        assert!(out.contains("not valid UTF-8"));
    }

    #[tokio::test]
    async fn list_dir_is_sorted_with_kinds_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(ws.join("b.txt"), "12345").unwrap();
        std::fs::write(ws.join("a.txt"), "").unwrap();
        std::fs::create_dir(ws.join("c")).unwrap();
        std::fs::write(ws.join("c/inner"), "x").unwrap();
        let expected = ".: 3 entries\nfile     a.txt  (0 bytes)\nfile     b.txt  (5 bytes)\ndir      c/\n";
        assert_eq!(list(ws, "").await.unwrap(), expected);
        assert_eq!(list(ws, ".").await.unwrap(), expected);
        let no_path = ListDirTool::new().call(json!({}), &ctx(ws)).await.unwrap();
        assert_eq!(no_path, expected);
        assert_eq!(list(ws, "c").await.unwrap(), "c: 1 entries\nfile     inner  (1 bytes)\n");
        assert!(
            matches!(list(ws, "a.txt").await, Err(ToolError::Failed(m)) if m.contains("not a directory"))
        );
        assert!(
            matches!(list(ws, "nope").await, Err(ToolError::Failed(m)) if m.contains("\"nope\" does not exist"))
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn list_dir_shows_symlinks_without_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::os::unix::fs::symlink(dir.path(), ws.join("link")).unwrap();
        assert_eq!(list(&ws, ".").await.unwrap(), ".: 1 entries\nsymlink  link\n");
    }

    #[tokio::test]
    async fn unknown_fields_and_wrong_types_are_invalid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let r = ReadFileTool::new(&cfg(10)).call(json!({"path": "a", "extra": 1}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(m)) if m.contains("extra")));
        let r = WriteFileTool::new(&cfg(10)).call(json!({"path": "a"}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(m)) if m.contains("content")));
        let r = ListDirTool::new().call(json!({"path": 3}), &c).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments(_))));
    }

    #[test]
    fn metadata_and_schemas() {
        let c = cfg(1);
        assert!(ReadFileTool::new(&c).idempotent());
        assert!(ListDirTool::new().idempotent());
        assert!(!WriteFileTool::new(&c).idempotent());
        let schema = WriteFileTool::new(&c).parameters();
        assert_eq!(schema["additionalProperties"], json!(false));
        let required = schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("path")) && required.contains(&json!("content")));
        assert_eq!(ReadFileTool::new(&c).name(), "read_file");
        assert_eq!(ListDirTool::new().name(), "list_dir");
    }
}
