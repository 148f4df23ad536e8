//! `hearth run` end to end with the scripted upstream: real runc, the real agent, the real
//! gateway and MCP server.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{leftovers, stderr, stdout};
use serde_json::Value;

/// `hearth run` with no real model configured.
fn hearth_run() -> Command {
    let mut cmd = common::hearth();
    cmd.env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("HEARTH_SCRIPTED_FIXTURE");
    cmd.arg("run");
    cmd
}

/// The result line of `hearth run --json`.
fn result_of(out: &str) -> Value {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"result\""))
        .unwrap_or_else(|| panic!("no result line in {out}"));
    serde_json::from_str::<Value>(line).unwrap()["task"].clone()
}

fn export(id: &str) -> Vec<Value> {
    let out = common::ok(&["task", "export", id]);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A fixture of scripted model turns, written to a temp file.
fn fixture(dir: &std::path::Path, turns: Value) -> std::path::PathBuf {
    let path = dir.join("fixture.json");
    let fixture = serde_json::json!({"name": "test-fixture", "description": "scripted turns for a test", "turns": turns});
    std::fs::write(&path, fixture.to_string()).unwrap();
    path
}

#[test]
fn the_agent_fixes_the_failing_test_and_the_diff_comes_back() {
    let out = hearth_run()
        .args(["Make the failing test pass.", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let task = result_of(&stdout(&out));
    assert_eq!(task["status"], "succeeded");
    let diff = task["diff"].as_str().unwrap();
    assert!(
        diff.contains("-    return sum(values) / (len(values) - 1)")
            && diff.contains("+    return sum(values) / len(values)"),
        "{diff}"
    );
    assert!(task["answer"].as_str().unwrap().contains("mean()"));
    let id = task["id"].as_str().unwrap();
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));

    // One ordered timeline: the gateway's calls and the agent's events, interleaved.
    let events = export(id);
    assert_eq!(events[0]["kind"], "task");
    let llm_calls = events.iter().filter(|e| e["kind"] == "llm_call").count();
    assert_eq!(llm_calls, 6, "six scripted model turns");
    let tools: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "agent" && e["data"]["type"] == "tool_call")
        .map(|e| e["data"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        tools.contains(&"edit_file".to_owned()) && tools.contains(&"shell".to_owned()),
        "{tools:?}"
    );
    let seqs: Vec<i64> = events[1..]
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn the_token_budget_runs_out() {
    let out = hearth_run()
        .args([
            "Make the failing test pass.",
            "--max-tokens",
            "1000",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(20), "{}", stderr(&out));
    let task = result_of(&stdout(&out));
    assert_eq!(task["status"], "failed");
    assert!(
        task["reason"].as_str().unwrap().contains("budget"),
        "{task}"
    );
    // The workspace was not fixed: the run stopped before the edit.
    assert!(task["diff"].as_str().unwrap_or("").is_empty(), "{task}");
}

fn sleeping_fixture(dir: &std::path::Path) -> std::path::PathBuf {
    fixture(
        dir,
        serde_json::json!([
            {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 30", "timeout_s": 120}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
            {"content": "done", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        ]),
    )
}

#[test]
fn the_timeout_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = hearth_run()
        .env("HEARTH_SCRIPTED_FIXTURE", sleeping_fixture(tmp.path()))
        .args(["Sleep.", "--timeout", "3", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(21), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the 30 s sleep was cut short"
    );
    let task = result_of(&stdout(&out));
    assert_eq!(task["status"], "timed_out");
    assert!(leftovers(task["id"].as_str().unwrap()).is_empty());
}

#[test]
fn ctrl_c_cancels_and_removes_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = hearth_run()
        .env("HEARTH_SCRIPTED_FIXTURE", sleeping_fixture(tmp.path()))
        .args(["Sleep.", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut id = String::new();
    // Wait until the agent is running its tool call, then interrupt.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let value: Value = serde_json::from_str(&line).unwrap();
        if value["type"] == "task" {
            id = value["id"].as_str().unwrap().to_owned();
        }
        if value["type"] == "agent" && value["event"]["type"] == "tool_call" {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(22), "{rest:?}");
    let task = result_of(&rest.join("\n"));
    assert_eq!(task["status"], "cancelled");
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

#[test]
fn the_api_key_never_enters_the_sandbox() {
    const KEY: &str = "sk-hearth-canary-7f3a9c";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let look = "env; cat /.hearth/task.json; grep -rl 'sk-hearth-cana''ry-7f3a9c' /workspace /.hearth /tmp /etc /root /run 2>/dev/null; echo searched";
    let turns = serde_json::json!([
        {"tool_calls": [{"name": "shell", "arguments": {"command": look, "timeout_s": 60}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        {"content": "looked", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    ]);
    let fixture = hearth_gateway::scripted::Fixture::load(&fixture(tmp.path(), turns)).unwrap();
    let upstream = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        hearth_gateway::scripted::ScriptedUpstream::spawn(fixture, listener).unwrap()
    });
    let out = hearth_run()
        .env("OPENAI_BASE_URL", upstream.base_url())
        .env("OPENAI_API_KEY", KEY)
        .args(["Look around.", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The upstream got the real key from the gateway...
    let requests = upstream.requests();
    assert!(!requests.is_empty());
    assert!(requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KEY}"))));
    // ...and nothing the sandbox saw or did contains it, nor does hearth's own output.
    let task = result_of(&stdout(&out));
    let record = export(task["id"].as_str().unwrap());
    let text = serde_json::to_string(&record).unwrap();
    assert!(
        text.contains("searched"),
        "the search ran inside the sandbox"
    );
    assert!(!text.contains(KEY), "the key leaked into the task record");
    assert!(!stdout(&out).contains(KEY) && !stderr(&out).contains(KEY));
}

#[test]
fn denials_and_drops_reach_the_task_timeline() {
    let tmp = tempfile::tempdir().unwrap();
    // One shell turn that makes a denied call (ptrace: EPERM under the default profile) and
    // tries a host port the firewall drops (the host side of the sandbox's link, port 9).
    let command = "python3 -c 'import ctypes; print(\"ptrace\", ctypes.CDLL(None).ptrace(16, 1, 0, 0))'; \
        host=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf); \
        python3 -c 'import socket, sys; s = socket.socket(); s.settimeout(1); print(\"connect\", s.connect_ex((sys.argv[1], 9)))' \"$host\"";
    let turns = serde_json::json!([
        {"tool_calls": [{"name": "shell", "arguments": {"command": command, "timeout_s": 30}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        {"content": "done", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    ]);
    let out = hearth_run()
        .env("HEARTH_SCRIPTED_FIXTURE", fixture(tmp.path(), turns))
        .args(["Probe the sandbox.", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    let task = result_of(&printed);
    let events = export(task["id"].as_str().unwrap());
    let denial = events
        .iter()
        .find(|e| e["kind"] == "syscall_denied" && e["data"]["syscall"] == "ptrace")
        .unwrap_or_else(|| panic!("ptrace denial in the timeline: {events:?}"));
    assert_eq!(denial["data"]["action"], "denied_eperm");
    let drop = events
        .iter()
        .find(|e| e["kind"] == "network_drop" && e["data"]["port"] == 9)
        .unwrap_or_else(|| panic!("the drop in the timeline: {events:?}"));
    assert_eq!(drop["data"]["reason"], "host");
    // The tool call came before the denial it caused, in one ordered timeline.
    let tool_seq = events
        .iter()
        .find(|e| e["kind"] == "agent" && e["data"]["type"] == "tool_call")
        .and_then(|e| e["seq"].as_i64())
        .unwrap();
    assert!(denial["seq"].as_i64().unwrap() > tool_seq);
    // `--json` progress carried them live too.
    assert!(printed.contains("\"type\":\"syscall_denied\""), "{printed}");
    assert!(printed.contains("\"type\":\"network_drop\""), "{printed}");
}
