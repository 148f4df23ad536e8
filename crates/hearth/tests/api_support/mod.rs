//! The `hearth serve` test harness: the daemon as a child process, a small HTTP/1.1 client
//! over TCP and the Unix socket, an SSE reader, and scripted fixtures.

#![allow(dead_code)]

use crate::common;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// One `hearth serve` child; stopped with SIGTERM (which cancels its tasks) when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    /// The E2B-compatible API (both planes).
    pub e2b_addr: String,
    pub socket: PathBuf,
    pub token: String,
    pub _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(fixture: Option<&Path>, max_concurrent: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, fixture, max_concurrent)
    }

    pub fn start_in(dir: tempfile::TempDir, fixture: Option<&Path>, max_concurrent: u32) -> Self {
        Self::launch(dir, fixture, max_concurrent, &[])
    }

    /// A daemon with these extra environment variables (e.g. another guest binary).
    pub fn start_with_env(envs: &[(&str, &str)]) -> Self {
        Self::launch(tempfile::tempdir().unwrap(), None, 1, envs)
    }

    fn launch(
        dir: tempfile::TempDir,
        fixture: Option<&Path>,
        max_concurrent: u32,
        envs: &[(&str, &str)],
    ) -> Self {
        let socket = dir.path().join("api.sock");
        let mut cmd = common::hearth();
        cmd.envs(envs.iter().copied());
        cmd.env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("HEARTH_API_TOKEN")
            .env_remove("HEARTH_SCRIPTED_FIXTURE");
        if let Some(fixture) = fixture {
            cmd.env("HEARTH_SCRIPTED_FIXTURE", fixture);
        }
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--e2b-listen",
                "127.0.0.1:0",
            ])
            .arg("--max-concurrent")
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
        let e2b_line = lines.next().unwrap().unwrap();
        let e2b_addr = e2b_line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no E2B address in {e2b_line:?}"))
            .to_owned();
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
            e2b_addr,
            socket,
            token,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// SIGKILLs the daemon (its temp dir goes with it); returns a fresh dir for the next one.
    pub fn kill9(mut self) -> tempfile::TempDir {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
        tempfile::tempdir().unwrap()
    }

    /// A request with the daemon's token; returns (status, body).
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
        let auth = format!("Bearer {}", self.token);
        request(&self.addr, method, path, &[("Authorization", &auth)], body)
    }

    pub fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
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

    pub fn submit(&self, prompt: &str) -> String {
        let (status, task) = self.json("POST", "/v1/tasks", Some(json!({"prompt": prompt})));
        assert_eq!(status, 202, "{task}");
        assert_eq!(task["status"], "queued");
        task["id"].as_str().unwrap().to_owned()
    }

    pub fn task(&self, id: &str) -> Value {
        let (status, task) = self.json("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(status, 200, "{task}");
        task
    }

    /// Opens the task's event stream (after `after`, via `Last-Event-ID` when `header`).
    pub fn events(&self, id: &str, after: Option<(i64, bool)>) -> SseStream {
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
        // A reaped daemon's pid may already be someone else's: signal only a live child.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

pub fn write_request(
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

pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
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

pub fn read_response(stream: impl Read) -> (u16, Vec<u8>) {
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

pub fn request(
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
pub struct Chunked<R> {
    pub inner: R,
    pub left: usize,
    pub done: bool,
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
pub struct SseStream {
    pub lines: BufReader<Chunked<BufReader<TcpStream>>>,
}

#[derive(Debug)]
pub struct Sse {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

impl SseStream {
    /// The next event, or `None` when the server ended the stream.
    pub fn next_event(&mut self) -> Option<Sse> {
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

    pub fn collect(mut self) -> Vec<Sse> {
        let mut all = Vec::new();
        while let Some(event) = self.next_event() {
            all.push(event);
        }
        all
    }

    /// Reads until an agent event of `kind` (`tool_call`, ...) arrives.
    pub fn until_agent(&mut self, kind: &str) {
        while let Some(event) = self.next_event() {
            if event.kind == "agent" && event.data["data"]["type"] == kind {
                return;
            }
        }
        panic!("the stream ended before an agent {kind} event");
    }
}

/// A fixture whose first tool call sleeps, so a task stays running until stopped.
pub fn sleeping_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("sleep-fixture.json");
    let turns = json!([
        {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 120", "timeout_s": 300}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        {"content": "done", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    ]);
    let fixture = json!({"name": "sleep", "description": "one tool call that sleeps two minutes", "turns": turns});
    std::fs::write(&path, fixture.to_string()).unwrap();
    path
}

pub fn assert_error(
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
