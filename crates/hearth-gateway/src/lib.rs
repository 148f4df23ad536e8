//! hearth's LLM gateway: the one place that holds the model API key.
//!
//! Sandboxes call an OpenAI-compatible `POST /v1/chat/completions` here with a per-task
//! [`GatewayToken`]; the gateway checks the task's token budget, forwards the request to the
//! configured upstream with the real [`ApiKey`] (which never leaves this process), counts
//! `usage.total_tokens`, and hands a [`GatewayCall`] for every call to a [`CallRecorder`].
//!
//! [`scripted`] is the scripted upstream: an OpenAI-compatible server replaying fixtures of model
//! turns, so tests, the demo and the benchmark run without a paid API.

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
