//! hearth's LLM gateway: the one place that holds the model API key.
//!
//! Sandboxes call an OpenAI-compatible `POST /v1/chat/completions` here with a per-task
//! [`GatewayToken`]; the gateway checks the task's token budget, forwards the request to the
//! configured upstream with the real [`ApiKey`] (which never leaves this process), counts
//! `usage.total_tokens`, and hands a [`GatewayCall`] for every call to a [`CallRecorder`].
//!
//! [`scripted`] is the scripted upstream: an OpenAI-compatible server replaying fixtures of model
//! turns, so tests, the demo and the benchmark run without a paid API.
//!
//! Decisions, in short:
//! - **Streaming is refused** (400, code `stream_unsupported`). Usage only arrives in a stream's
//!   last chunk, so a streamed call could run past the budget unseen and a dropped stream would
//!   go uncharged; the agent never streams. Adding it later means forwarding the SSE body while
//!   scanning for the usage chunk (with `stream_options.include_usage` forced on).
//! - **Budgets admit, then charge** ([`budget`]): a call is admitted while the task has spent less
//!   than its budget and charged its `usage.total_tokens` when it returns. The overshoot is at
//!   most the usage of the calls in flight, capped per task (`max_in_flight_per_task`, 429
//!   beyond). A response without `usage` is passed on uncharged, with a warning.
//! - **Upstream URLs follow OpenAI's convention** (`https://api.openai.com/v1`): endpoints are
//!   appended to them. HTTPS uses rustls with the `ring` provider and the webpki roots.
//! - **Secrets**: the key is only in the upstream request's Authorization header; bodies going
//!   back to the sandbox have it scrubbed, recorded bodies have the key and the task's token
//!   scrubbed, and every `Debug` of a key or token is redacted.

pub mod bench;
pub mod budget;
pub mod config;
mod http_server;
mod proxy;
pub mod record;
pub mod registry;
mod reply;
pub mod scripted;
pub mod server;
pub mod task;
pub mod upstream;

pub use budget::{BudgetError, BudgetUsage};
pub use config::{ApiKey, ConfigError, GatewayConfig, UpstreamUrl};
pub use record::{CallRecorder, GatewayCall, MemoryRecorder};
pub use registry::RegistryError;
pub use server::{Gateway, GatewayError, ListenerHandle};
pub use task::{GatewayToken, TaskId, TaskIdError};
pub use upstream::UpstreamError;
