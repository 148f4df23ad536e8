//! [`Gateway`]: the shared state (config, upstream client, tasks, recorder) and the listeners
//! that serve it. One gateway serves any number of listeners, one per sandbox veth address.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::budget::BudgetUsage;
use crate::config::GatewayConfig;
use crate::proxy;
use crate::record::CallRecorder;
use crate::registry::{RegistryError, TaskRegistry};
use crate::reply::ApiError;
use crate::task::{GatewayToken, TaskId};
use crate::upstream::{Upstream, UpstreamError};

pub const CHAT_COMPLETIONS_PATH: &str = "/v1/chat/completions";
pub const MODELS_PATH: &str = "/v1/models";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("reading the listener's local address failed: {0}")]
    LocalAddr(#[source] std::io::Error),
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) upstream: Upstream,
    pub(crate) tasks: TaskRegistry,
    pub(crate) recorder: Arc<dyn CallRecorder>,
}

/// The LLM gateway. Cheap to clone; clones share tasks, budgets and the upstream's pool.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        recorder: Arc<dyn CallRecorder>,
    ) -> Result<Self, GatewayError> {
        let upstream = Upstream::new(&config)?;
        let shared = Shared {
            config,
            upstream,
            tasks: TaskRegistry::default(),
            recorder,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Registers a task with a budget of `max_tokens` (the sum of `usage.total_tokens`) and
    /// returns the token its sandbox must present.
    pub fn register_task(
        &self,
        task_id: TaskId,
        max_tokens: u64,
    ) -> Result<GatewayToken, RegistryError> {
        let max_in_flight = self.shared.config.max_in_flight_per_task;
        self.shared
            .tasks
            .register(task_id, max_tokens, max_in_flight)
    }

    /// Forgets a task: its token stops working at once. Returns what it spent.
    pub fn revoke_task(&self, task_id: &TaskId) -> Option<BudgetUsage> {
        self.shared.tasks.revoke(task_id)
    }

    pub fn task_usage(&self, task_id: &TaskId) -> Option<BudgetUsage> {
        self.shared.tasks.usage(task_id)
    }

    /// Serves `listener` until the future is dropped.
    pub async fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let timeout = shared.config.header_read_timeout;
        crate::http_server::serve(listener, timeout, move |request, peer| {
            let shared = Arc::clone(&shared);
            async move { route(&shared, request, peer).await }
        })
        .await;
    }

    /// Serves `listener` on a new task of the current Tokio runtime (so it must be called from
    /// within one); the returned handle stops accepting when stopped or dropped.
    pub fn spawn(&self, listener: TcpListener) -> Result<ListenerHandle, GatewayError> {
        let local_addr = listener.local_addr().map_err(GatewayError::LocalAddr)?;
        let gateway = self.clone();
        let task = tokio::spawn(async move { gateway.serve(listener).await });
        tracing::info!(%local_addr, upstream = %self.shared.config.upstream_url, "gateway listening");
        Ok(ListenerHandle { local_addr, task })
    }
}

async fn route(
    shared: &Shared,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // Nothing but a live task token gets any answer beyond 401, whatever the path.
    if let Err(error) = proxy::authenticate(shared, request.headers()) {
        tracing::warn!(%peer, %path, %error, "refused a request without a valid gateway token");
        return error.reply().into_response();
    }
    let reply = match (method, path.as_str()) {
        (Method::POST, CHAT_COMPLETIONS_PATH) => {
            proxy::chat_completions(shared, request, peer).await
        }
        (Method::GET, MODELS_PATH) => proxy::models(shared, request, peer).await,
        (method, CHAT_COMPLETIONS_PATH | MODELS_PATH) => {
            ApiError::MethodNotAllowed { method, path }.reply()
        }
        _ => ApiError::NotFound { path }.reply(),
    };
    reply.into_response()
}

/// One listener being served. Connections already open finish their current exchange; new
/// ones are no longer accepted once this is stopped or dropped.
#[derive(Debug)]
pub struct ListenerHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop(self) {
        // Drop does the work.
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
