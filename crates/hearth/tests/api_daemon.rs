//! `hearth serve` end to end: the daemon runs as a child process on the shared test roots,
//! with real runc, the real agent and the scripted upstream; requests go over loopback TCP (and
//! the Unix socket) with a small HTTP/1.1 client.

mod api_support;
mod common;

use api_support::*;
use common::leftovers;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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

/// The daemon's open sockets: its SSE connections among them, but not the store's files, whose
/// pool may close idle connections (and so fall below a baseline) at any moment.
fn open_sockets(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
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
    // The running task opens and closes descriptors of its own (its guest requests and store
    // connections), so the baseline is the fewest seen over a moment, not one sample.
    let fds = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            open_fds(daemon.pid())
        })
        .min()
        .unwrap_or_default();
    let sockets = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            open_sockets(daemon.pid())
        })
        .min()
        .unwrap_or_default();
    let thread_count = threads(daemon.pid());
    for _ in 0..3 {
        let streams: Vec<SseStream> = (0..20)
            .map(|_| {
                let mut stream = daemon.events(&id, None);
                stream.next_event().expect("a replayed event");
                stream
            })
            .collect();
        assert!(
            open_sockets(daemon.pid()) >= sockets + 20,
            "the streams are open"
        );
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
