//! The gateway against a scripted upstream: key injection, tokens, budgets, recording, limits
//! and upstream failures.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{bind, chat_body, dead_addr, Harness, REAL_KEY};
use hearth_gateway::scripted::Fixture;
use hearth_gateway::{GatewayToken, TaskId, UpstreamUrl};
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn missing_unknown_and_revoked_tokens_get_401() {
    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-auth", 100_000);
    let url = harness.url("/v1/chat/completions");
    let body = chat_body(0).to_string();
    let stranger = format!("Bearer {}", GatewayToken::generate().expose());
    for bearer in [
        None,
        Some("Bearer"),
        Some("Bearer nonsense"),
        Some(&*stranger),
        Some(REAL_KEY),
    ] {
        let reply = harness
            .client
            .send(Method::POST, &url, bearer, body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{bearer:?}: {}",
            reply.text
        );
        assert_eq!(reply.error()["type"], "authentication_error");
    }
    assert_eq!(
        harness.chat(&token, &chat_body(0)).await.status,
        StatusCode::OK
    );
    let usage = harness
        .gateway
        .revoke_task(&TaskId::parse("task-auth").unwrap())
        .unwrap();
    assert_eq!(usage.spent_tokens, 633);
    assert_eq!(
        harness.chat(&token, &chat_body(0)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        harness.scripted.requests().len(),
        1,
        "only the authenticated call went upstream"
    );
    assert_eq!(
        harness.recorder.calls().len(),
        1,
        "calls without a task are not recorded"
    );
}

/// A squatter or a scanner learns nothing from the gateway: without a task token every path,
/// known or not, is a 401 (a 404 would tell what exists).
#[tokio::test]
async fn without_a_token_every_path_is_401() {
    let harness = Harness::start(Fixture::demo()).await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/no/such/path"),
        (Method::GET, "/v1/models"),
        (Method::DELETE, "/v1/chat/completions"),
    ] {
        let reply = harness
            .client
            .send(method.clone(), &harness.url(path), None, String::new())
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

#[tokio::test]
async fn a_spent_budget_is_refused_with_402_without_calling_upstream() {
    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-budget", 1_000);
    // Turn 0 uses 633 tokens, turn 1 uses 726: the second call is admitted below the budget
    // and overshoots it, the third is refused.
    assert_eq!(
        harness.chat(&token, &chat_body(0)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        harness.chat(&token, &chat_body(1)).await.status,
        StatusCode::OK
    );
    let refused = harness.chat(&token, &chat_body(2)).await;
    assert_eq!(
        refused.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        refused.text
    );
    let error = refused.error();
    assert_eq!(error["type"], "budget_exhausted");
    assert_eq!(error["code"], "budget_exhausted");
    assert_eq!(
        error["message"],
        "task budget of 1000 tokens spent (1359 used)"
    );
    assert_eq!(
        harness.scripted.requests().len(),
        2,
        "the refused call never went upstream"
    );

    let usage = harness
        .gateway
        .task_usage(&TaskId::parse("task-budget").unwrap())
        .unwrap();
    assert_eq!(
        (usage.max_tokens, usage.spent_tokens, usage.in_flight),
        (1_000, 1_359, 0)
    );
    let statuses: Vec<u16> = harness.recorder.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 200, 402]);
}

#[tokio::test]
async fn every_call_is_recorded_with_usage_and_redacted_bodies() {
    let harness =
        Harness::start_with(Fixture::demo(), |config| config.record_cap_bytes = 2_000).await;
    let token = harness.register("task-record", 100_000);
    let mut body = chat_body(1);
    // A sandbox that pastes its own token into the conversation must not get it recorded.
    body["messages"][1]["content"] = json!(format!("my token is {}", token.expose()));
    assert_eq!(harness.chat(&token, &body).await.status, StatusCode::OK);
    let mut big = chat_body(0);
    big["messages"][1]["content"] = json!("x".repeat(5_000));
    assert_eq!(harness.chat(&token, &big).await.status, StatusCode::OK);

    let calls = harness.recorder.calls();
    assert_eq!(calls.len(), 2);
    let call = &calls[0];
    assert_eq!(call.task_id.as_str(), "task-record");
    assert_eq!(call.model.as_deref(), Some("scripted"));
    assert_eq!(
        (
            call.prompt_tokens,
            call.completion_tokens,
            call.total_tokens
        ),
        (688, 38, 726)
    );
    assert_eq!(call.status, 200);
    assert_eq!(
        call.request["messages"][1]["content"],
        "my token is [REDACTED]"
    );
    assert_eq!(
        call.response["choices"][0]["message"]["tool_calls"][1]["function"]["name"],
        "read_file"
    );
    assert_eq!(
        calls[1].request["truncated"], true,
        "a request over the cap is cut"
    );
    assert!(calls[1].request["bytes"].as_u64().unwrap() > 5_000);
}

#[tokio::test]
async fn oversized_bodies_get_413_and_malformed_ones_400() {
    let harness = Harness::start_with(Fixture::demo(), |config| {
        config.max_request_bytes = 64 << 10
    })
    .await;
    let token = harness.register("task-bad", 100_000);
    let bearer = format!("Bearer {}", token.expose());
    let url = harness.url("/v1/chat/completions");
    let send = |body: String| harness.client.send(Method::POST, &url, Some(&bearer), body);

    let mut big = chat_body(0);
    big["messages"][1]["content"] = json!("x".repeat(100 << 10));
    let reply = send(big.to_string()).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert!(reply.error()["message"]
        .as_str()
        .unwrap()
        .contains("65536 bytes"));

    let cases = [
        (
            "{\"model\": \"m\", \"messages\": [",
            "not valid JSON",
            "invalid_json",
        ),
        (
            "{\"model\": \"m\"}",
            "\"messages\" is missing",
            "invalid_request",
        ),
        (
            "{\"messages\": []}",
            "\"model\" is missing",
            "invalid_request",
        ),
        (
            "{\"model\": 5, \"messages\": []}",
            "invalid type: integer `5`",
            "invalid_request",
        ),
        ("[1, 2]", "must be a JSON object", "invalid_request"),
        (
            "{\"model\": \"m\", \"messages\": [], \"stream\": true}",
            "streaming",
            "stream_unsupported",
        ),
    ];
    for (body, says, code) in cases {
        let reply = send(body.to_owned()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        let error = reply.error();
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], code, "{body}");
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    assert!(
        harness.scripted.requests().is_empty(),
        "no bad request went upstream"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502_naming_it() {
    let harness = Harness::start(Fixture::demo()).await;
    let dead = dead_addr().await;
    let config = hearth_gateway::GatewayConfig::new(
        UpstreamUrl::parse(&format!("http://{dead}/v1")).unwrap(),
        Some(hearth_gateway::ApiKey::new(REAL_KEY).unwrap()),
    );
    let gateway = hearth_gateway::Gateway::new(config, harness.recorder.clone()).unwrap();
    let listener = gateway.spawn(bind().await).unwrap();
    let token = gateway
        .register_task(TaskId::parse("task-down").unwrap(), 1_000)
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr());
    let bearer = format!("Bearer {}", token.expose());
    let reply = harness
        .client
        .send(Method::POST, &url, Some(&bearer), chat_body(0).to_string())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text);
    let error = reply.error();
    assert_eq!(error["type"], "upstream_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "upstream http://{dead}/v1/chat/completions is unreachable"
        )),
        "{message}"
    );
    assert!(
        message.contains("onnection refused"),
        "the cause is named: {message}"
    );
    assert!(!reply.text.contains(REAL_KEY));
    assert_eq!(
        gateway
            .task_usage(&TaskId::parse("task-down").unwrap())
            .unwrap()
            .in_flight,
        0
    );
}

#[tokio::test]
async fn a_slow_upstream_gets_504() {
    let mut fixture = Fixture::demo();
    fixture.turns[0].delay_ms = 5_000;
    let harness = Harness::start_with(fixture, |config| {
        config.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let token = harness.register("task-slow", 100_000);
    let reply = harness.chat(&token, &chat_body(0)).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text);
    assert_eq!(reply.error()["code"], "upstream_timeout");
    assert!(
        reply.text.contains("did not answer within 200ms"),
        "{}",
        reply.text
    );
}

/// An upstream that rejects the key and quotes it, as some providers do.
async fn key_quoting_upstream() -> std::net::SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 64 << 10];
        let _ = stream.read(&mut request).await.unwrap();
        let body = format!(
            r#"{{"error":{{"type":"invalid_request_error","message":"Incorrect API key provided: {REAL_KEY}"}}}}"#
        );
        let response = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn an_upstream_quoting_the_key_is_scrubbed() {
    let upstream = key_quoting_upstream().await;
    let config = hearth_gateway::GatewayConfig::new(
        UpstreamUrl::parse(&format!("http://{upstream}/v1")).unwrap(),
        Some(hearth_gateway::ApiKey::new(REAL_KEY).unwrap()),
    );
    let recorder = Arc::new(hearth_gateway::MemoryRecorder::default());
    let gateway = hearth_gateway::Gateway::new(config, recorder.clone()).unwrap();
    let listener = gateway.spawn(bind().await).unwrap();
    let token = gateway
        .register_task(TaskId::parse("task-quote").unwrap(), 1_000)
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr());
    let bearer = format!("Bearer {}", token.expose());
    let reply = common::TestClient::new()
        .send(Method::POST, &url, Some(&bearer), chat_body(0).to_string())
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "the upstream's status is passed on"
    );
    assert!(
        reply
            .text
            .contains("Incorrect API key provided: [REDACTED]"),
        "{}",
        reply.text
    );
    assert!(!reply.text.contains(REAL_KEY));
    assert!(!serde_json::to_string(&recorder.calls())
        .unwrap()
        .contains(REAL_KEY));
}

#[tokio::test]
async fn models_routes_and_methods() {
    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-models", 1_000);
    let bearer = format!("Bearer {}", token.expose());
    let models = harness
        .client
        .send(Method::GET, &harness.url("/v1/models"), Some(&bearer), "")
        .await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.text);
    assert_eq!(models.json()["data"][0]["id"], "scripted");
    let anonymous = harness
        .client
        .send(Method::GET, &harness.url("/v1/models"), None, "")
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let missing = harness
        .client
        .send(
            Method::GET,
            &harness.url("/v1/embeddings"),
            Some(&bearer),
            "",
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.error()["message"]
        .as_str()
        .unwrap()
        .contains("/v1/embeddings"));
    let wrong = harness
        .client
        .send(
            Method::GET,
            &harness.url("/v1/chat/completions"),
            Some(&bearer),
            "",
        )
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn one_gateway_serves_many_listeners_and_stops_each() {
    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-two", 100_000);
    let second = harness.gateway.spawn(bind().await).unwrap();
    let url = format!("http://{}/v1/chat/completions", second.local_addr());
    let bearer = format!("Bearer {}", token.expose());
    let reply = harness
        .client
        .send(Method::POST, &url, Some(&bearer), chat_body(0).to_string())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let addr = second.local_addr();
    second.stop();
    tokio::task::yield_now().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopped listener refuses"
    );
    assert_eq!(
        harness.chat(&token, &chat_body(1)).await.status,
        StatusCode::OK,
        "the first still serves"
    );
}

/// The agent's client (Python's urllib) sends the whole body before reading the answer: it must
/// get the 413, not a broken pipe.
const URLLIB_POST: &str = r#"
import json, sys, urllib.error, urllib.request
url, token, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * size}]}).encode()
request = urllib.request.Request(url, data=body, method="POST")
request.add_header("Authorization", "Bearer " + token)
try:
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30)
    print("200")
except urllib.error.HTTPError as exc:
    print(exc.code, json.loads(exc.read())["error"]["code"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_http_client_gets_the_413() {
    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-urllib", 100_000);
    let output = tokio::process::Command::new("python3")
        .args([
            "-c",
            URLLIB_POST,
            &harness.url("/v1/chat/completions"),
            &token.expose(),
        ])
        .arg((6 << 20).to_string())
        .output()
        .await
        .expect("python3 runs (the agent needs it too)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        "413 request_too_large",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_body_over_the_default_limit_gets_413() {
    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-huge", 100_000);
    let mut huge = chat_body(0);
    huge["messages"][1]["content"] = json!("x".repeat(6 << 20));
    let reply = harness.chat(&token, &huge).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert_eq!(reply.error()["code"], "request_too_large");
}
