//! `hearth serve` end to end: the daemon runs as a child process on the shared test roots,
//! with real runc, the real agent and the scripted upstream; requests go over loopback TCP (and
//! the Unix socket) with a small HTTP/1.1 client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::leftovers;
use serde_json::{json, Value};

/// One `hearth serve` child; stopped with SIGTERM (which cancels its tasks) when dropped.
struct Daemon {
    child: Child,
    addr: String,
    socket: PathBuf,
    token: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(fixture: Option<&Path>, max_concurrent: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, fixture, max_concurrent)
    }

    fn start_in(dir: tempfile::TempDir, fixture: Option<&Path>, max_concurrent: u32) -> Self {
        let socket = dir.path().join("api.sock");
        let mut cmd = common::hearth();
        cmd.env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("HEARTH_API_TOKEN")
            .env_remove("HEARTH_SCRIPTED_FIXTURE");
        if let Some(fixture) = fixture {
            cmd.env("HEARTH_SCRIPTED_FIXTURE", fixture);
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--max-concurrent"])
            .arg(max_concurrent.to_string())
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("the daemon printed its address")
            .unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        let token_line = lines.next().unwrap().unwrap();
        assert!(token_line.contains("api-token"), "{token_line}");
        // Keep reading stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let token_file = common::env().state_dir.join("api-token");
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is private");
        let token = std::fs::read_to_string(token_file)
            .unwrap()
            .trim()
            .to_owned();
        assert!(
            !first.contains(&token) && !token_line.contains(&token),
            "the token is never printed"
        );
        Self {
            child,
            addr,
            socket,
            token,
            _dir: dir,
        }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn kill9(mut self) -> tempfile::TempDir {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::mem::forget(self); // no SIGTERM to a dead daemon
        dir
    }

    /// A request with the daemon's token; returns (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
        let auth = format!("Bearer {}", self.token);
        request(&self.addr, method, path, &[("Authorization", &auth)], body)
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let (status, out) = self.call(method, path, bytes.as_deref());
        let value = serde_json::from_slice(&out).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&out)
            )
        });
        (status, value)
    }

    fn submit(&self, prompt: &str) -> String {
        let (status, task) = self.json("POST", "/v1/tasks", Some(json!({"prompt": prompt})));
        assert_eq!(status, 202, "{task}");
        assert_eq!(task["status"], "queued");
        task["id"].as_str().unwrap().to_owned()
    }

    fn task(&self, id: &str) -> Value {
        let (status, task) = self.json("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(status, 200, "{task}");
        task
    }

    /// Opens the task's event stream (after `after`, via `Last-Event-ID` when `header`).
    fn events(&self, id: &str, after: Option<(i64, bool)>) -> SseStream {
        let auth = format!("Bearer {}", self.token);
        let mut path = format!("/v1/tasks/{id}/events");
        let seq;
        let mut headers = vec![("Authorization", auth.as_str())];
        match after {
            Some((n, true)) => {
                seq = n.to_string();
                headers.push(("Last-Event-ID", &seq));
            }
            Some((n, false)) => path.push_str(&format!("?after={n}")),
            None => {}
        }
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write_request(&mut stream, "GET", &path, &headers, None);
        let mut reader = BufReader::new(stream);
        let (status, head) = read_head(&mut reader);
        assert_eq!(status, 200, "{head:?}");
        assert!(head
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
        assert!(head
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked"));
        SseStream {
            lines: BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: hearth\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        // A server may refuse an oversized body before reading it all.
        let _ = stream.write_all(body);
    }
}

fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            return (status, headers);
        }
        let (name, value) = trimmed.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
}

fn read_response(stream: impl Read) -> (u16, Vec<u8>) {
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut body = Vec::new();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        Chunked {
            inner: reader,
            left: 0,
            done: false,
        }
        .read_to_end(&mut body)
        .unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    (status, body)
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write_request(&mut stream, method, path, headers, body);
    read_response(stream)
}

/// Decodes a chunked body as it arrives.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line == "\r\n" {
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            self.left = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

/// Server-Sent Events, one parsed event at a time.
struct SseStream {
    lines: BufReader<Chunked<BufReader<TcpStream>>>,
}

#[derive(Debug)]
struct Sse {
    id: i64,
    kind: String,
    data: Value,
}

impl SseStream {
    /// The next event, or `None` when the server ended the stream.
    fn next_event(&mut self) -> Option<Sse> {
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            if self.lines.read_line(&mut line).unwrap() == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if let Some(id) = id {
                    return Some(Sse {
                        id,
                        kind,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                continue; // a keep-alive comment's end
            }
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }

    fn collect(mut self) -> Vec<Sse> {
        let mut all = Vec::new();
        while let Some(event) = self.next_event() {
            all.push(event);
        }
        all
    }

    /// Reads until an agent event of `kind` (`tool_call`, ...) arrives.
    fn until_agent(&mut self, kind: &str) {
        while let Some(event) = self.next_event() {
            if event.kind == "agent" && event.data["data"]["type"] == kind {
                return;
            }
        }
        panic!("the stream ended before an agent {kind} event");
    }
}

/// A fixture whose first tool call sleeps, so a task stays running until stopped.
fn sleeping_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("sleep-fixture.json");
    let turns = json!([
        {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 120", "timeout_s": 300}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        {"content": "done", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    ]);
    let fixture = json!({"name": "sleep", "description": "one tool call that sleeps two minutes", "turns": turns});
    std::fs::write(&path, fixture.to_string()).unwrap();
    path
}

#[test]
fn a_task_runs_through_the_api_and_its_events_stream_to_the_end() {
    let daemon = Daemon::start(None, 4);
    let id = daemon.submit("Make the failing test pass.");
    let events = daemon.events(&id, None).collect();

    let last = events.last().expect("events");
    assert_eq!(last.kind, "state");
    assert_eq!(last.data["data"]["status"], "succeeded", "{last:?}");
    assert_eq!(events[0].data["data"]["status"], "queued");
    assert!(
        events.windows(2).all(|w| w[1].id == w[0].id + 1),
        "ids are the timeline's seqs, in order"
    );
    assert!(events
        .iter()
        .all(|e| e.data["seq"] == e.id && e.data["kind"] == e.kind.as_str()));
    assert_eq!(
        events.iter().filter(|e| e.kind == "llm_call").count(),
        6,
        "six scripted turns"
    );
    assert!(events
        .iter()
        .any(|e| e.kind == "agent" && e.data["data"]["name"] == "edit_file"));

    let task = daemon.task(&id);
    assert_eq!(task["status"], "succeeded");
    let diff = task["diff"].as_str().unwrap();
    assert!(
        diff.contains("+    return sum(values) / len(values)"),
        "{diff}"
    );
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));

    // Resuming replays only what follows, by header or query, and ends at once (task final).
    let cut = events[events.len() - 3].id;
    for header in [true, false] {
        let rest = daemon.events(&id, Some((cut, header))).collect();
        assert_eq!(
            rest.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![cut + 1, cut + 2]
        );
    }
    let (status, list) = daemon.json("GET", "/v1/tasks", None);
    assert_eq!(status, 200);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str()));
}

fn assert_error(
    daemon: &Daemon,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    status: u16,
    kind: &str,
    mentions: &str,
) {
    let (got, out) = daemon.call(method, path, body);
    let value: Value = serde_json::from_slice(&out).unwrap_or_else(|_| {
        panic!(
            "{method} {path}: error body is not JSON: {}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(got, status, "{method} {path}: {value}");
    assert_eq!(value["error"]["type"], kind, "{value}");
    let message = value["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "{method} {path}: {message:?} should mention {mentions:?}"
    );
}

#[test]
fn bad_inputs_get_a_json_error_naming_the_problem() {
    let daemon = Daemon::start(None, 1);
    // Token: missing, wrong, wrong scheme.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", "Basic abc")],
    ] {
        let (status, out) = request(&daemon.addr, "GET", "/v1/tasks", &headers, None);
        assert_eq!(status, 401);
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["error"]["type"], "unauthorized");
    }
    let bad_token = request(
        &daemon.addr,
        "POST",
        "/v1/tasks",
        &[("Authorization", "Bearer x")],
        Some(b"{}"),
    );
    assert_eq!(bad_token.0, 401, "the token is checked before the body");

    let post = |body: &[u8], status, kind, mentions| {
        assert_error(
            &daemon,
            "POST",
            "/v1/tasks",
            Some(body),
            status,
            kind,
            mentions,
        )
    };
    post(b"{\"prompt\": ", 400, "malformed_json", "EOF");
    post(b"not json", 400, "malformed_json", "expected");
    post(
        br#"{"prompt": "x", "max_stepz": 3}"#,
        422,
        "invalid_request",
        "max_stepz",
    );
    post(
        br#"{"prompt": "x", "max_steps": "ten"}"#,
        422,
        "invalid_request",
        "invalid type",
    );
    post(br#"{"model": "m"}"#, 422, "invalid_request", "prompt");
    post(br#"{"prompt": "   "}"#, 422, "invalid_request", "prompt");
    post(
        br#"{"prompt": "x", "workspace": "/no/such/dir"}"#,
        422,
        "invalid_request",
        "workspace",
    );
    post(
        br#"{"prompt": "x", "workspace": "relative"}"#,
        422,
        "invalid_request",
        "workspace",
    );
    post(
        br#"{"prompt": "x", "timeout_s": 0}"#,
        422,
        "invalid_request",
        "timeout_s",
    );
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(2 << 20));
    post(big.as_bytes(), 413, "too_large", "limit");

    assert_error(
        &daemon,
        "GET",
        "/v1/tasks/Bad_Id",
        None,
        400,
        "bad_request",
        "Bad_Id",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/tasks/t-000000000000",
        None,
        404,
        "not_found",
        "t-000000000000",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/tasks/t-000000000000/events",
        None,
        404,
        "not_found",
        "t-000000000000",
    );
    assert_error(
        &daemon,
        "POST",
        "/v1/tasks/t-000000000000/cancel",
        None,
        404,
        "not_found",
        "t-000000000000",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/nothing",
        None,
        404,
        "not_found",
        "/v1/nothing",
    );
    assert_error(
        &daemon,
        "DELETE",
        "/v1/tasks",
        None,
        405,
        "method_not_allowed",
        "DELETE",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/sandboxes/sb-nope00000000",
        None,
        404,
        "not_found",
        "sb-nope00000000",
    );
    assert_error(
        &daemon,
        "POST",
        "/v1/sandboxes",
        Some(br#"{"memory": "lots"}"#),
        422,
        "invalid_request",
        "memory",
    );
    assert_error(
        &daemon,
        "POST",
        "/v1/sandboxes/sb-nope00000000/exec",
        Some(br#"{"argv": []}"#),
        422,
        "invalid_request",
        "argv",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/sandboxes/sb-nope00000000/files",
        None,
        422,
        "invalid_request",
        "path",
    );

    // The Unix socket serves the same API, with the same token, and only root may connect.
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let auth = format!("Bearer {}", daemon.token);
    let mut unix = UnixStream::connect(&daemon.socket).unwrap();
    write_request(
        &mut unix,
        "GET",
        "/v1/tasks/Bad_Id",
        &[("Authorization", &auth)],
        None,
    );
    let (status, _) = read_response(unix);
    assert_eq!(status, 400);
    let mut unix = UnixStream::connect(&daemon.socket).unwrap();
    write_request(&mut unix, "GET", "/v1/tasks", &[], None);
    assert_eq!(read_response(unix).0, 401);
}

#[test]
fn cancel_stops_the_agent_and_removes_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Some(&sleeping_fixture(tmp.path())), 2);
    let id = daemon.submit("Sleep.");
    let mut stream = daemon.events(&id, None);
    stream.until_agent("tool_call");
    assert_eq!(daemon.task(&id)["status"], "running");
    assert!(
        !leftovers(&id).is_empty(),
        "the sandbox is up while the agent sleeps"
    );

    let (status, task) = daemon.json("POST", &format!("/v1/tasks/{id}/cancel"), None);
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "cancelled", "{task}");
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    // The open stream ends with the final state.
    let rest = stream.collect();
    assert_eq!(rest.last().unwrap().data["data"]["status"], "cancelled");
    assert_error(
        &daemon,
        "POST",
        &format!("/v1/tasks/{id}/cancel"),
        None,
        409,
        "conflict",
        "cancelled",
    );
}

#[test]
fn a_daemon_killed_mid_task_leaves_it_interrupted_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = sleeping_fixture(tmp.path());
    let daemon = Daemon::start(Some(&fixture), 1);
    let running = daemon.submit("Sleep.");
    let queued = daemon.submit("Sleep too.");
    daemon.events(&running, None).until_agent("tool_call");
    // One slot: the second task waits its turn.
    assert_eq!(daemon.task(&queued)["status"], "queued");
    assert!(!leftovers(&running).is_empty(), "the sandbox is up");
    // Any hearth daemon starting from now on (another test's too) may do the interrupting.
    let dir = daemon.kill9();

    let daemon = Daemon::start_in(dir, Some(&fixture), 1);
    for id in [&running, &queued] {
        let task = daemon.task(id);
        assert_eq!(task["status"], "interrupted", "{task}");
        assert!(
            task["reason"].as_str().unwrap().contains("stopped"),
            "{task}"
        );
        let events = daemon.events(id, None).collect();
        let last = events.last().unwrap();
        assert_eq!(
            last.data["data"]["status"], "interrupted",
            "a timeline event says so"
        );
    }
    assert!(leftovers(&running).is_empty(), "{:?}", leftovers(&running));
    assert!(leftovers(&queued).is_empty());
}

#[test]
fn the_openapi_document_parses_and_every_route_in_it_is_served() {
    let daemon = Daemon::start(None, 1);
    let (status, doc) = daemon.json("GET", "/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut seen = Vec::new();
    for (path, item) in paths {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            let concrete = path.replace("{id}", "zz-no-such-thing")
                + if path.ends_with("/files") {
                    "?path=/x"
                } else {
                    ""
                };
            // Bodies that are refused before anything is created.
            let body: Option<&[u8]> = match method.as_str() {
                "post" | "put" => Some(br#"{"unknown_field": 1}"#),
                _ => None,
            };
            let (got, out) = daemon.call(&method.to_uppercase(), &concrete, body);
            let text = String::from_utf8_lossy(&out);
            assert!(
                got != 405 && !text.contains("no route"),
                "{method} {path} is documented but not served: {got} {text}"
            );
            seen.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    for route in [
        "POST /v1/tasks",
        "GET /v1/tasks",
        "GET /v1/tasks/{id}",
        "GET /v1/tasks/{id}/events",
        "POST /v1/tasks/{id}/cancel",
        "POST /v1/sandboxes",
        "POST /v1/sandboxes/{id}/exec",
        "GET /v1/sandboxes/{id}/files",
        "PUT /v1/sandboxes/{id}/files",
        "DELETE /v1/sandboxes/{id}",
        "GET /openapi.json",
    ] {
        assert!(
            seen.iter().any(|s| s == route),
            "{route} is not documented: {seen:?}"
        );
    }
}

#[test]
fn sandbox_endpoints_create_exec_move_files_and_remove() {
    let daemon = Daemon::start(None, 1);
    let (status, record) = daemon.json("POST", "/v1/sandboxes", Some(json!({"memory": "256M"})));
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap().to_owned();
    let (status, put) = {
        let (s, out) = daemon.call(
            "PUT",
            &format!("/v1/sandboxes/{id}/files?path=/workspace/in.bin&mode=600"),
            Some(&[0xff, 0xfe, b'\n']),
        );
        (s, serde_json::from_slice::<Value>(&out).unwrap())
    };
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["size"], 3);
    let (status, out) = daemon.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(json!({"argv": ["sh", "-c", "cat in.bin; echo err >&2; exit 3"]})),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["exit_code"], 3);
    assert_eq!(out["encoding"], "base64", "stdout is not UTF-8");
    assert_eq!(out["stdout"], "//4K");
    let (_, out) = daemon.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(json!({"argv": ["sh", "-c", "echo hi > out.txt; cat"], "stdin": "typed"})),
    );
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("typed")),
        "{out}"
    );
    let (status, bytes) = daemon.call(
        "GET",
        &format!("/v1/sandboxes/{id}/files?path=/workspace/out.txt"),
        None,
    );
    assert_eq!((status, bytes.as_slice()), (200, &b"hi\n"[..]));
    let (_, out) = daemon.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(json!({"argv": ["no-such-program"]})),
    );
    assert_eq!(out["exit_code"], 127);
    assert_error(
        &daemon,
        "GET",
        &format!("/v1/sandboxes/{id}/files?path=/workspace/missing"),
        None,
        404,
        "not_found",
        "missing",
    );
    let (status, _) = daemon.call("DELETE", &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(status, 204);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    assert_error(
        &daemon,
        "DELETE",
        &format!("/v1/sandboxes/{id}"),
        None,
        404,
        "not_found",
        &id,
    );
}

fn open_fds(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn threads(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn dropped_event_streams_leave_the_daemon_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Some(&sleeping_fixture(tmp.path())), 1);
    let id = daemon.submit("Sleep.");
    daemon.events(&id, None).until_agent("tool_call");
    std::thread::sleep(Duration::from_millis(500));
    let (fds, thread_count) = (open_fds(daemon.pid()), threads(daemon.pid()));
    for _ in 0..3 {
        let streams: Vec<SseStream> = (0..20)
            .map(|_| {
                let mut stream = daemon.events(&id, None);
                stream.next_event().expect("a replayed event");
                stream
            })
            .collect();
        assert!(open_fds(daemon.pid()) >= fds + 20, "the streams are open");
        drop(streams);
    }
    // Each stream's connection (and everything behind it) goes once the client is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(daemon.pid()) > fds + 2 {
        assert!(
            Instant::now() < deadline,
            "fds stay open: {} now, {fds} before",
            open_fds(daemon.pid())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(threads(daemon.pid()) <= thread_count + 2, "threads grew");
    assert_eq!(daemon.task(&id)["status"], "running", "the task went on");
    let (status, task) = daemon.json("POST", &format!("/v1/tasks/{id}/cancel"), None);
    assert_eq!((status, task["status"].as_str()), (200, Some("cancelled")));
}
