//! The scripted upstream: it replays fixtures turn by turn, runs conversations side by side,
//! and its demo fixture really fixes the demo workspace.

mod common;

use std::path::Path;
use std::process::Command;

use common::{chat_body, Harness, TestClient};
use hearth_gateway::scripted::{Fixture, ScriptedUpstream, DEMO_PROMPT, DEMO_WORKSPACE_FILES};
use hearth_gateway::TaskId;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// What a conversation saw: the tool names of each turn, then the final answer.
#[derive(Debug, PartialEq)]
struct Transcript {
    tools: Vec<Vec<String>>,
    answer: String,
}

/// Plays the agent: sends the conversation, appends each answer and a result per tool call,
/// until an answer without tool calls.
async fn converse(client: &TestClient, url: &str, bearer: &str) -> Transcript {
    let mut messages = vec![json!({ "role": "user", "content": DEMO_PROMPT })];
    let mut tools = Vec::new();
    for _ in 0..20 {
        let body = json!({ "model": "scripted", "messages": messages });
        let reply = client
            .send(Method::POST, url, Some(bearer), body.to_string())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let message = reply.json()["choices"][0]["message"].clone();
        messages.push(message.clone());
        let Some(calls) = message["tool_calls"].as_array() else {
            let answer = message["content"].as_str().unwrap().to_owned();
            return Transcript { tools, answer };
        };
        let mut names = Vec::new();
        for call in calls {
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert!(arguments.is_object());
            names.push(call["function"]["name"].as_str().unwrap().to_owned());
            messages.push(json!({ "role": "tool", "tool_call_id": call["id"], "content": "ok" }));
        }
        tools.push(names);
    }
    panic!("the conversation did not end");
}

fn demo_tools() -> Vec<Vec<String>> {
    let turns: &[&[&str]] = &[
        &["list_dir"],
        &["read_file", "read_file"],
        &["shell"],
        &["edit_file"],
        &["shell"],
    ];
    turns
        .iter()
        .map(|t| t.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[tokio::test]
async fn replays_the_demo_fixture_in_order_then_says_it_is_exhausted() {
    let listener = common::bind().await;
    let scripted = ScriptedUpstream::spawn(Fixture::demo(), listener).unwrap();
    let client = TestClient::new();
    let url = format!("{}/chat/completions", scripted.base_url());
    let transcript = converse(&client, &url, "Bearer anything").await;
    assert_eq!(transcript.tools, demo_tools());
    assert!(
        transcript.answer.starts_with("Fixed mean()"),
        "{}",
        transcript.answer
    );
    let turns: Vec<usize> = scripted.requests().iter().map(|r| r.turn).collect();
    assert_eq!(turns, [0, 1, 2, 3, 4, 5]);

    let past_end = client
        .send(Method::POST, &url, None, chat_body(6).to_string())
        .await;
    assert_eq!(past_end.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(past_end.error()["code"], "fixture_exhausted");
    let retry = client
        .send(Method::POST, &url, None, chat_body(2).to_string())
        .await;
    assert_eq!(
        retry.json()["id"],
        "chatcmpl-scripted-2",
        "a retried turn gets the same answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_tasks_converse_concurrently_through_the_gateway() {
    let harness = std::sync::Arc::new(Harness::start(Fixture::demo()).await);
    let mut runs = Vec::new();
    for task in 0..4 {
        let harness = harness.clone();
        runs.push(tokio::spawn(async move {
            let token = harness.register(&format!("task-{task}"), 100_000);
            let bearer = format!("Bearer {}", token.expose());
            converse(
                &TestClient::new(),
                &harness.url("/v1/chat/completions"),
                &bearer,
            )
            .await
        }));
    }
    for run in runs {
        assert_eq!(run.await.unwrap().tools, demo_tools());
    }
    let fixture_total: u64 = Fixture::demo()
        .turns
        .iter()
        .map(|t| t.usage.prompt_tokens + t.usage.completion_tokens)
        .sum();
    for task in 0..4 {
        let id = TaskId::parse(&format!("task-{task}")).unwrap();
        let usage = harness.gateway.task_usage(&id).unwrap();
        assert_eq!(
            usage.spent_tokens, fixture_total,
            "each task is charged its own turns"
        );
    }
    assert_eq!(harness.recorder.calls().len(), 24);
}

fn unittest(dir: &Path) -> bool {
    Command::new("python3")
        .args(["-m", "unittest", "-q"])
        .current_dir(dir)
        .output()
        .expect("python3 runs")
        .status
        .success()
}

/// The fixture's edits, applied as `edit_file` would (exact, single match), make the demo
/// workspace's failing test pass.
#[test]
fn the_demo_fixture_fixes_the_demo_workspace() {
    let workspace = tempfile::tempdir().unwrap();
    for (name, content) in DEMO_WORKSPACE_FILES {
        std::fs::write(workspace.path().join(name), content).unwrap();
    }
    assert!(
        !unittest(workspace.path()),
        "the demo test fails before the fix"
    );
    let fixture = Fixture::demo();
    let edits = fixture
        .turns
        .iter()
        .flat_map(|t| &t.tool_calls)
        .filter(|c| c.name == "edit_file");
    for edit in edits {
        let path = workspace
            .path()
            .join(edit.arguments["path"].as_str().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let old = edit.arguments["old"].as_str().unwrap();
        assert_eq!(text.matches(old).count(), 1, "`old` matches exactly once");
        std::fs::write(
            &path,
            text.replace(old, edit.arguments["new"].as_str().unwrap()),
        )
        .unwrap();
    }
    assert!(
        unittest(workspace.path()),
        "the demo test passes after the fixture's edit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs() {
    // Figures are printed by `examples/gateway_bench.rs`; here only that it works end to end.
    let report = hearth_gateway::bench::gateway_overhead(20).await.unwrap();
    assert_eq!(report.calls, 20);
    assert!(report.gateway.p50_us > 0 && report.direct.p50_us > 0);
}
