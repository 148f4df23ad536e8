//! The gateway's overhead benchmark: the same chat request sent straight to a scripted upstream
//! and through a gateway in front of it, alternately, in one run; the p50 difference is what
//! the gateway adds per call (goal: at most 1 ms). `examples/gateway_bench.rs` runs it, and the
//! CLI can call [`gateway_overhead`] for `hearth bench`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{ApiKey, ConfigError, GatewayConfig, UpstreamUrl};
use crate::record::{CallRecorder, GatewayCall};
use crate::registry::RegistryError;
use crate::scripted::{Fixture, ScriptedError, ScriptedUpstream, DEMO_PROMPT};
use crate::server::{Gateway, GatewayError};
use crate::task::{TaskId, TaskIdError};

const WARMUP_CALLS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("binding {addr} failed: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Scripted(#[from] ScriptedError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    TaskId(#[from] TaskIdError),
    #[error("benchmark request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the benchmark response from {url} failed: {source}")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("benchmark request to {url} answered {status}")]
    Status { url: String, status: StatusCode },
}

/// Latency percentiles of one path, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyStats {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchReport {
    pub calls: usize,
    pub direct: LatencyStats,
    pub gateway: LatencyStats,
}

impl BenchReport {
    /// What the gateway adds at the median, in microseconds (noise can make it negative).
    pub fn overhead_p50_us(&self) -> i64 {
        let gateway = i64::try_from(self.gateway.p50_us).unwrap_or(i64::MAX);
        let direct = i64::try_from(self.direct.p50_us).unwrap_or(i64::MAX);
        gateway - direct
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "gateway overhead, {} calls per path, scripted upstream on loopback",
            self.calls
        )?;
        for (name, stats) in [("direct ", self.direct), ("gateway", self.gateway)] {
            writeln!(
                f,
                "  {name}  p50 {:>6} us  p90 {:>6} us  p99 {:>6} us",
                stats.p50_us, stats.p90_us, stats.p99_us
            )?;
        }
        write!(
            f,
            "  added by the gateway at p50: {} us (goal: <= 1000 us)",
            self.overhead_p50_us()
        )
    }
}

/// Counts calls instead of keeping them, so a long run does not grow memory; the host's
/// recorder (a channel send) costs about the same.
#[derive(Debug, Default)]
struct CountingRecorder(AtomicU64);

impl CallRecorder for CountingRecorder {
    fn record(&self, _call: GatewayCall) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `calls` measured calls per path (after a warm-up) and reports both.
pub async fn gateway_overhead(calls: usize) -> Result<BenchReport, BenchError> {
    let scripted = ScriptedUpstream::spawn(Fixture::demo(), bind().await?)?;
    let config = GatewayConfig::new(
        UpstreamUrl::parse(&scripted.base_url())?,
        Some(ApiKey::new("sk-hearth-bench-not-a-real-key")?),
    );
    let gateway = Gateway::new(config, Arc::new(CountingRecorder::default()))?;
    let token = gateway.register_task(TaskId::parse("bench")?, u64::MAX)?;
    let listener = gateway.spawn(bind().await?)?;

    let direct_url = format!("{}/chat/completions", scripted.base_url());
    let gateway_url = format!("http://{}/v1/chat/completions", listener.local_addr());
    let bearer = format!("Bearer {}", token.expose());
    let client = Bencher::new(request_body());

    for _ in 0..WARMUP_CALLS {
        client.call(&direct_url, "Bearer direct").await?;
        client.call(&gateway_url, &bearer).await?;
    }
    let mut direct = Vec::with_capacity(calls);
    let mut through = Vec::with_capacity(calls);
    for i in 0..calls {
        // Alternating which path goes first keeps drift and cache effects off one side.
        if i % 2 == 0 {
            direct.push(client.call(&direct_url, "Bearer direct").await?);
            through.push(client.call(&gateway_url, &bearer).await?);
        } else {
            through.push(client.call(&gateway_url, &bearer).await?);
            direct.push(client.call(&direct_url, "Bearer direct").await?);
        }
    }
    Ok(BenchReport {
        calls,
        direct: stats(direct),
        gateway: stats(through),
    })
}

async fn bind() -> Result<TcpListener, BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    TcpListener::bind(addr)
        .await
        .map_err(|source| BenchError::Bind { addr, source })
}

/// A realistic first agent request: system prompt, the task, the five tool schemas.
fn request_body() -> Bytes {
    let tool = |name: &str, props: serde_json::Value| {
        json!({ "type": "function", "function": {
            "name": name, "description": format!("The {name} tool."),
            "parameters": { "type": "object", "properties": props },
        }})
    };
    let s = json!({ "type": "string" });
    let body = json!({
        "model": "scripted",
        "messages": [
            { "role": "system", "content": "You are a coding agent working in a sandboxed workspace. Use the tools to inspect and change files and to run commands; answer when the task is done." },
            { "role": "user", "content": DEMO_PROMPT },
        ],
        "tools": [
            tool("shell", json!({ "command": s, "timeout_s": { "type": "number" } })),
            tool("read_file", json!({ "path": s })),
            tool("write_file", json!({ "path": s, "content": s })),
            tool("edit_file", json!({ "path": s, "old": s, "new": s })),
            tool("list_dir", json!({ "path": s })),
        ],
    });
    Bytes::from(body.to_string())
}

struct Bencher {
    client: Client<HttpConnector, Full<Bytes>>,
    body: Bytes,
}

impl Bencher {
    fn new(body: Bytes) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, body }
    }

    /// One call, timed from sending the request to having the whole response body.
    async fn call(&self, url: &str, bearer: &str) -> Result<u64, BenchError> {
        let request = Request::post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, bearer)
            .body(Full::new(self.body.clone()))
            .expect("a constant URL and headers form a valid request");
        let started = Instant::now();
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| BenchError::Request {
                    url: url.to_owned(),
                    source,
                })?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|source| BenchError::Body {
                url: url.to_owned(),
                source,
            })?;
        let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if status != StatusCode::OK {
            return Err(BenchError::Status {
                url: url.to_owned(),
                status,
            });
        }
        Ok(elapsed)
    }
}

fn stats(mut samples: Vec<u64>) -> LatencyStats {
    samples.sort_unstable();
    let at = |q: usize| {
        samples
            .get((samples.len().saturating_sub(1)) * q / 100)
            .copied()
            .unwrap_or(0)
    };
    LatencyStats {
        p50_us: at(50),
        p90_us: at(90),
        p99_us: at(99),
    }
}
