//! `hearth-guest mcp` end to end: the real binary on pipes, spoken to in raw newline-delimited
//! JSON-RPC, so these tests see exactly the bytes an MCP client would.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ANSWER_WITHIN: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server on a fresh workspace and completes the handshake.
    fn start(extra: &[&str]) -> Server {
        let mut server = Server::spawn(extra);
        let init = server.initialize("2025-06-18");
        assert_eq!(init["protocolVersion"], "2025-06-18", "{init}");
        server.notify("notifications/initialized", json!({}));
        server
    }

    fn spawn(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-guest"))
            .arg("mcp")
            .arg("--root")
            .arg(dir.path())
            .args(extra)
            .env("HEARTH_TEST_SERVER_SECRET", "must-not-leak")
            .env_remove("HEARTH_WORKSPACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Server {
            child,
            stdin,
            lines,
            next_id: 1,
            dir,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its id without waiting.
    fn start_request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// The whole response message (`result` or `error`) to request `id`.
    fn response(&mut self, id: u64) -> Value {
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("server answered in time");
            let message: Value = serde_json::from_str(&line).expect("every line is JSON");
            assert_eq!(message["jsonrpc"], "2.0", "{message}");
            if message["id"] == json!(id) && message.get("method").is_none() {
                return message;
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.start_request(method, params);
        let message = self.response(id);
        assert!(message.get("error").is_none(), "{method}: {message}");
        message["result"].clone()
    }

    fn initialize(&mut self, version: &str) -> Value {
        let client = json!({"name": "hearth-guest-tests", "version": "0"});
        let params = json!({"protocolVersion": version, "capabilities": {}, "clientInfo": client});
        self.request("initialize", params)
    }

    /// Calls a tool; returns its text and `isError`.
    fn call(&mut self, name: &str, arguments: Value) -> (String, bool) {
        let result = self.request("tools/call", json!({"name": name, "arguments": arguments}));
        let content = result["content"].as_array().expect("content list");
        let text: Vec<&str> = content
            .iter()
            .map(|c| c["text"].as_str().unwrap())
            .collect();
        (text.join("\n"), result["isError"] == json!(true))
    }

    fn ok(&mut self, name: &str, arguments: Value) -> String {
        let (text, is_error) = self.call(name, arguments);
        assert!(!is_error, "{name} failed: {text}");
        text
    }

    fn err(&mut self, name: &str, arguments: Value) -> String {
        let (text, is_error) = self.call(name, arguments);
        assert!(is_error, "{name} should have failed: {text}");
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is gone (or a zombie, which no longer runs anything).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn handshake_lists_the_five_tools_with_schemas() {
    let mut server = Server::start(&[]);
    let result = server.request("tools/list", json!({}));
    let tools = result["tools"].as_array().unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["edit_file", "list_dir", "read_file", "shell", "write_file"]
    );
    let schema = |name: &str| {
        let tool = tools.iter().find(|t| t["name"] == name).unwrap();
        assert!(!tool["description"].as_str().unwrap().is_empty());
        tool["inputSchema"].clone()
    };
    let shell = schema("shell");
    assert_eq!(shell["type"], "object");
    assert_eq!(shell["required"], json!(["command"]), "{shell}");
    assert_eq!(
        shell["properties"]["timeout_s"]["type"], "number",
        "{shell}"
    );
    assert!(
        shell["properties"]["timeout_s"].get("default").is_none(),
        "{shell}"
    );
    assert_eq!(
        schema("edit_file")["required"],
        json!(["path", "old", "new"])
    );
    assert_eq!(schema("write_file")["required"], json!(["path", "content"]));
    assert_eq!(schema("read_file")["required"], json!(["path"]));
    assert_eq!(schema("list_dir")["additionalProperties"], json!(false));
}

#[test]
fn older_protocol_versions_are_echoed_and_unknown_ones_get_a_known_version() {
    for version in ["2024-11-05", "2025-03-26", "2025-06-18"] {
        let mut server = Server::spawn(&[]);
        let init = server.initialize(version);
        assert_eq!(init["protocolVersion"], version, "{init}");
        assert_eq!(init["serverInfo"]["name"], "hearth-guest");
        assert!(init["capabilities"]["tools"].is_object(), "{init}");
        server.notify("notifications/initialized", json!({}));
        assert_eq!(
            server.ok("shell", json!({"command": "echo hi"})),
            "exit code: 0\nstdout:\nhi\n\nstderr:\n"
        );
    }
    let mut server = Server::spawn(&[]);
    let init = server.initialize("2099-01-01");
    let offered = init["protocolVersion"].as_str().unwrap();
    assert!(
        offered.starts_with("20") && offered != "2099-01-01",
        "{init}"
    );
}

#[test]
fn write_read_list_and_edit_files() {
    let mut server = Server::start(&[]);
    let wrote = server.ok(
        "write_file",
        json!({"path": "src/deep/calc.py", "content": "a = 1\nb = 1\n"}),
    );
    assert!(wrote.starts_with("created "), "{wrote}");
    let file = server.root().join("src/deep/calc.py");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a = 1\nb = 1\n");
    assert_eq!(
        server.ok("read_file", json!({"path": "src/deep/calc.py"})),
        "a = 1\nb = 1\n"
    );
    // Absolute paths work too.
    let absolute = file.to_str().unwrap();
    assert_eq!(
        server.ok("read_file", json!({"path": absolute})),
        "a = 1\nb = 1\n"
    );

    std::fs::write(server.root().join("top.txt"), "x").unwrap();
    assert_eq!(server.ok("list_dir", json!({"path": "."})), "src/\ntop.txt");
    assert_eq!(
        server.ok("list_dir", json!({"path": "src/deep"})),
        "calc.py"
    );

    let edited = server.ok(
        "edit_file",
        json!({"path": "src/deep/calc.py", "old": "b = 1", "new": "b = 2"}),
    );
    assert!(edited.contains("line 2"), "{edited}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a = 1\nb = 2\n");

    let none = server.err(
        "edit_file",
        json!({"path": "src/deep/calc.py", "old": "c = 1", "new": "c = 2"}),
    );
    assert!(
        none.contains("`old` must match exactly once") && none.contains("found 0"),
        "{none}"
    );
    let two = server.err(
        "edit_file",
        json!({"path": "src/deep/calc.py", "old": " = ", "new": "="}),
    );
    assert!(two.contains("found 2"), "{two}");
    let empty = server.err(
        "edit_file",
        json!({"path": "src/deep/calc.py", "old": "", "new": "z"}),
    );
    assert!(empty.contains("must not be empty"), "{empty}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "a = 1\nb = 2\n",
        "failed edits change nothing"
    );
}

#[test]
fn file_tool_failures_are_error_results_naming_the_path() {
    let mut server = Server::start(&[]);
    let missing = server.err("read_file", json!({"path": "absent.txt"}));
    assert!(
        missing.contains("absent.txt") && missing.contains("No such file"),
        "{missing}"
    );
    let dir = server.err("read_file", json!({"path": "."}));
    assert!(dir.contains("is a directory"), "{dir}");
    let not_dir = server.err("list_dir", json!({"path": "nope"}));
    assert!(not_dir.contains("nope"), "{not_dir}");
    std::fs::write(server.root().join("binary"), [0xff, 0xfe, 0x00]).unwrap();
    let binary = server.err("read_file", json!({"path": "binary"}));
    assert!(binary.contains("not UTF-8"), "{binary}");
    let missing_edit = server.err(
        "edit_file",
        json!({"path": "absent.txt", "old": "a", "new": "b"}),
    );
    assert!(missing_edit.contains("absent.txt"), "{missing_edit}");
}

#[test]
fn writes_are_atomic_keep_the_mode_and_respect_the_size_cap() {
    let mut server = Server::start(&["--max-file", "1K"]);
    let script = server.root().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho old\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    let wrote = server.ok(
        "write_file",
        json!({"path": "run.sh", "content": "#!/bin/sh\necho new\n"}),
    );
    assert!(wrote.starts_with("overwrote "), "{wrote}");
    let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);
    assert_eq!(
        server.ok("shell", json!({"command": "./run.sh"})),
        "exit code: 0\nstdout:\nnew\n\nstderr:\n"
    );
    let leftovers: Vec<PathBuf> = std::fs::read_dir(server.root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let big = "x".repeat(2048);
    let too_big = server.err("write_file", json!({"path": "big.txt", "content": big}));
    assert!(too_big.contains("limit is 1024"), "{too_big}");
    assert!(!server.root().join("big.txt").exists());
    std::fs::write(server.root().join("big.txt"), &big).unwrap();
    let too_big = server.err("read_file", json!({"path": "big.txt"}));
    assert!(too_big.contains("1024-byte limit"), "{too_big}");
}

#[test]
fn shell_runs_in_the_workspace_with_an_allowlisted_environment() {
    let mut server = Server::start(&[]);
    let text = server.ok(
        "shell",
        json!({"command": "pwd; echo to-stderr >&2; env; exit 3"}),
    );
    let root = server.root().canonicalize().unwrap();
    assert!(
        text.starts_with(&format!("exit code: 3\nstdout:\n{}\n", root.display())),
        "{text}"
    );
    assert!(text.ends_with("stderr:\nto-stderr\n"), "{text}");
    assert!(
        text.contains(&format!("HEARTH_WORKSPACE={}", root.display())),
        "{text}"
    );
    assert!(text.contains("\nPATH="), "{text}");
    assert!(
        !text.contains("must-not-leak"),
        "the server's environment leaked: {text}"
    );

    let killed = server.ok("shell", json!({"command": "kill -9 $$"}));
    assert!(
        killed.starts_with("exit code: 137 (killed by signal 9)"),
        "{killed}"
    );
    let stdin = server.ok("shell", json!({"command": "cat; echo done"}));
    assert!(
        stdin.contains("done"),
        "stdin must be closed, not inherited: {stdin}"
    );
}

#[test]
fn shell_timeout_kills_the_whole_process_group_and_keeps_partial_output() {
    let mut server = Server::start(&[]);
    let command = "sleep 300 & echo $! > bg.pid; echo started; wait";
    let text = server.err("shell", json!({"command": command, "timeout_s": 0.5}));
    assert!(text.starts_with("command timed out after 0.5s"), "{text}");
    assert!(text.contains("stdout:\nstarted\n"), "{text}");
    let pid = read_pid(&server.root().join("bg.pid"));
    assert!(
        wait_gone(pid),
        "background sleep {pid} survived the timeout"
    );

    let bad = server.err("shell", json!({"command": "true", "timeout_s": -1}));
    assert!(bad.contains("timeout_s"), "{bad}");
}

#[test]
fn long_output_keeps_its_head_and_tail() {
    let mut server = Server::start(&["--max-output", "2000"]);
    let text = server.ok("shell", json!({"command": "seq 1 100000; echo oops >&2"}));
    assert!(
        text.starts_with("exit code: 0\nstdout:\n1\n2\n3\n"),
        "{text:.200}"
    );
    assert!(text.contains("[... output truncated: "), "{text}");
    assert!(text.ends_with("99999\n100000\n\nstderr:\noops\n"), "{text}");
    assert!(text.len() < 2200, "{} bytes returned", text.len());
}

#[test]
fn bad_tool_names_and_arguments() {
    let mut server = Server::start(&[]);
    let id = server.start_request("tools/call", json!({"name": "rm_rf", "arguments": {}}));
    let response = server.response(id);
    assert_eq!(response["error"]["code"], -32602, "{response}");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rm_rf") && message.contains("read_file"),
        "{message}"
    );

    // Arguments that do not fit the schema are error results the model can correct.
    let unknown_field = server.err("read_file", json!({"pth": "x"}));
    assert!(
        unknown_field.contains("unknown field `pth`"),
        "{unknown_field}"
    );
    let missing = server.err("write_file", json!({"path": "x"}));
    assert!(missing.contains("missing field `content`"), "{missing}");
    let wrong_type = server.err("shell", json!({"command": 42}));
    assert!(wrong_type.contains("invalid type"), "{wrong_type}");
    assert!(!server.root().join("x").exists());
}

#[test]
fn cancelling_a_call_kills_its_command() {
    let mut server = Server::start(&[]);
    let id = server.start_request(
        "tools/call",
        json!({"name": "shell", "arguments": {"command": "echo $$ > sh.pid; sleep 300"}}),
    );
    let pid = read_pid(&server.root().join("sh.pid"));
    server.notify(
        "notifications/cancelled",
        json!({"requestId": id, "reason": "test"}),
    );
    assert!(wait_gone(pid), "cancelled command {pid} still runs");
    // The session goes on.
    assert!(server
        .ok("shell", json!({"command": "echo after"}))
        .contains("after"));
}

#[test]
fn closing_stdin_stops_the_server_and_its_background_jobs() {
    let mut server = Server::start(&[]);
    let text = server.ok(
        "shell",
        json!({"command": "sleep 300 > /dev/null 2>&1 & echo $!"}),
    );
    let pid: u32 = text.lines().nth(2).unwrap().parse().unwrap();
    assert!(
        !process_gone(pid),
        "the background job should outlive its call"
    );
    drop(server.stdin.take());
    let deadline = Instant::now() + ANSWER_WITHIN;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit on stdin EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(wait_gone(pid), "background job {pid} outlived the server");
}

#[test]
fn a_workspace_that_does_not_exist_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hearth-guest"))
        .args(["mcp", "--root"])
        .arg(dir.path().join("missing"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("missing") && stderr.contains("workspace"),
        "{stderr}"
    );
}
