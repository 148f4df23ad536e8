//! The scripted upstream's HTTP server.
//!
//! Which turn to answer is read from the request itself: the number of assistant messages
//! already in `messages`. A conversation's position therefore needs no server-side state or
//! conversation key, any number of conversations (the benchmark's 4 concurrent tasks, tests in
//! parallel) run side by side on one server, and a retried request gets the same turn again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::fixture::Fixture;
use crate::http_server::{read_capped, serve};

/// Bigger than any request the gateway forwards.
const MAX_REQUEST_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScriptedError {
    #[error("reading the scripted upstream's local address failed: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// A chat request as the scripted upstream received it. `authorization` is what a real
/// provider would see: tests use it to check that the gateway injected the real key.
#[derive(Debug, Clone)]
pub struct ScriptedRequest {
    pub authorization: Option<String>,
    pub body: Value,
    /// The turn it was answered with (it may be past the fixture's end).
    pub turn: usize,
}

#[derive(Debug)]
struct State {
    fixture: Fixture,
    requests: Mutex<Vec<ScriptedRequest>>,
}

/// A running scripted upstream; stops serving when dropped.
#[derive(Debug)]
pub struct ScriptedUpstream {
    local_addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Serves `fixture` on `listener`, on a task of the current Tokio runtime.
    pub fn spawn(fixture: Fixture, listener: TcpListener) -> Result<Self, ScriptedError> {
        let local_addr = listener.local_addr().map_err(ScriptedError::LocalAddr)?;
        let state = Arc::new(State {
            fixture,
            requests: Mutex::default(),
        });
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            serve(listener, Duration::from_secs(30), move |request, _peer| {
                let state = Arc::clone(&served);
                async move { route(&state, request).await }
            })
            .await;
        });
        tracing::info!(%local_addr, fixture = %state.fixture.name, "scripted upstream listening");
        Ok(Self {
            local_addr,
            state,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL to configure as the gateway's upstream (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.local_addr)
    }

    pub fn fixture(&self) -> &Fixture {
        &self.state.fixture
    }

    /// Every chat request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ScriptedRequest> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn route(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => chat(state, request).await,
        (&Method::GET, "/v1/models") => {
            let models = json!({ "object": "list", "data": [
                { "id": "scripted", "object": "model", "created": 0, "owned_by": "hearth-scripted" }
            ]});
            respond(StatusCode::OK, &models)
        }
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("scripted upstream: no endpoint {path}"),
        ),
    }
}

async fn chat(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = match read_capped(request.into_body(), MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()),
    };
    let turn = assistant_turns(&body);
    let model = body["model"].as_str().unwrap_or("scripted").to_owned();
    lock(&state.requests).push(ScriptedRequest {
        authorization,
        body,
        turn,
    });
    let fixture = &state.fixture;
    let Some(completion) = fixture.completion(turn, &model) else {
        let message = format!(
            "scripted upstream: fixture {:?} has {} turns and this conversation asks for turn {}",
            fixture.name,
            fixture.turns.len(),
            turn + 1
        );
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "fixture_exhausted",
            &message,
        );
    };
    let delay = fixture.turns[turn].delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    respond(StatusCode::OK, &completion)
}

fn assistant_turns(body: &Value) -> usize {
    body["messages"].as_array().map_or(0, |messages| {
        messages.iter().filter(|m| m["role"] == "assistant").count()
    })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "error": { "type": "server_error", "code": code, "message": message } });
    respond(status, &body)
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
