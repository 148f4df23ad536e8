//! A gateway in front of a scripted upstream, and a plain HTTP client, for the tests.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hearth_gateway::scripted::{Fixture, ScriptedUpstream};
use hearth_gateway::{
    ApiKey, Gateway, GatewayConfig, GatewayToken, ListenerHandle, MemoryRecorder, TaskId,
    UpstreamUrl,
};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The "real" upstream key of the tests; it must never reach a client, a record or a log.
pub const REAL_KEY: &str = "sk-test-REAL-upstream-key-5f2b9c0e7a41";

pub struct Harness {
    pub scripted: ScriptedUpstream,
    pub gateway: Gateway,
    pub listener: ListenerHandle,
    pub recorder: Arc<MemoryRecorder>,
    pub client: TestClient,
}

impl Harness {
    pub async fn start(fixture: Fixture) -> Self {
        Self::start_with(fixture, |_| {}).await
    }

    pub async fn start_with(fixture: Fixture, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let scripted = ScriptedUpstream::spawn(fixture, bind().await).unwrap();
        let mut config = GatewayConfig::new(
            UpstreamUrl::parse(&scripted.base_url()).unwrap(),
            Some(ApiKey::new(REAL_KEY).unwrap()),
        );
        tweak(&mut config);
        let recorder = Arc::new(MemoryRecorder::default());
        let gateway = Gateway::new(config, recorder.clone()).unwrap();
        let listener = gateway.spawn(bind().await).unwrap();
        Self {
            scripted,
            gateway,
            listener,
            recorder,
            client: TestClient::new(),
        }
    }

    pub fn register(&self, task: &str, max_tokens: u64) -> GatewayToken {
        self.gateway
            .register_task(TaskId::parse(task).unwrap(), max_tokens)
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener.local_addr())
    }

    /// POST /v1/chat/completions with `token` as the bearer.
    pub async fn chat(&self, token: &GatewayToken, body: &Value) -> Reply {
        let bearer = format!("Bearer {}", token.expose());
        self.client
            .send(
                Method::POST,
                &self.url("/v1/chat/completions"),
                Some(&bearer),
                body.to_string(),
            )
            .await
    }
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    bind().await.local_addr().unwrap()
}

/// A chat request `assistant_turns` turns into its conversation (the scripted upstream answers
/// the turn after them).
pub fn chat_body(assistant_turns: usize) -> Value {
    let mut messages = vec![
        json!({ "role": "system", "content": "You are a coding agent." }),
        json!({ "role": "user", "content": "Make the failing test pass." }),
    ];
    for turn in 0..assistant_turns {
        messages.push(json!({ "role": "assistant", "content": format!("turn {turn}") }));
        messages.push(json!({ "role": "user", "content": "go on" }));
    }
    json!({ "model": "scripted", "messages": messages })
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text))
    }

    /// Asserts OpenAI's error shape and returns `error`.
    pub fn error(&self) -> Value {
        let error = self.json()["error"].clone();
        assert!(error["type"].is_string(), "{}", self.text);
        assert!(error["message"].is_string(), "{}", self.text);
        error
    }
}

pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(CONTENT_TYPE, "application/json");
        if let Some(bearer) = bearer {
            request = request.header(AUTHORIZATION, bearer);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }
}
