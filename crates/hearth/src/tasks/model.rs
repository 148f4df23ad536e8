//! Which model a task talks to: a real OpenAI-compatible endpoint when one is configured, the
//! scripted upstream (fixtures of model turns) otherwise.

use hearth_gateway::scripted::{Fixture, ScriptedUpstream};
use hearth_gateway::{ApiKey, Gateway, GatewayConfig, UpstreamUrl};
use std::sync::Arc;

use super::recorder::StoreRecorder;

/// Environment variables naming a real model endpoint (as OpenAI's clients read them).
pub const BASE_URL_ENV: &str = "OPENAI_BASE_URL";
pub const API_KEY_ENV: &str = "OPENAI_API_KEY";
/// A fixture file for the scripted upstream instead of the embedded demo one (tests use it).
pub const FIXTURE_ENV: &str = "HEARTH_SCRIPTED_FIXTURE";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{BASE_URL_ENV}: {0}")]
    BadUrl(hearth_gateway::ConfigError),
    #[error("{API_KEY_ENV}: {0}")]
    BadKey(hearth_gateway::ConfigError),
    #[error("cannot start the scripted upstream on loopback: {0}")]
    Scripted(String),
    #[error("cannot start the gateway: {0}")]
    Gateway(#[from] hearth_gateway::GatewayError),
}

/// The gateway of this hearth process and what stands behind it.
#[derive(Debug)]
pub struct ModelBackend {
    pub gateway: Gateway,
    /// Kept alive while tasks run; `Some` when no real endpoint is configured.
    pub scripted: Option<ScriptedUpstream>,
    /// One line for the user: which upstream answers.
    pub description: String,
}

impl ModelBackend {
    /// Uses `OPENAI_BASE_URL` (+ `OPENAI_API_KEY`) when set, else starts the scripted upstream
    /// replaying the demo fixture on a loopback port.
    pub async fn from_env(recorder: Arc<StoreRecorder>) -> Result<Self, ModelError> {
        if let Ok(raw) = std::env::var(BASE_URL_ENV) {
            let url = UpstreamUrl::parse(&raw).map_err(ModelError::BadUrl)?;
            let key = match std::env::var(API_KEY_ENV) {
                Ok(key) if !key.is_empty() => Some(ApiKey::new(key).map_err(ModelError::BadKey)?),
                _ => None,
            };
            let description = format!("model endpoint {}", url.as_str());
            let gateway = Gateway::new(GatewayConfig::new(url, key), recorder)?;
            return Ok(Self {
                gateway,
                scripted: None,
                description,
            });
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|err| ModelError::Scripted(err.to_string()))?;
        let fixture = match std::env::var_os(FIXTURE_ENV) {
            Some(path) => Fixture::load(std::path::Path::new(&path))
                .map_err(|err| ModelError::Scripted(err.to_string()))?,
            None => Fixture::demo(),
        };
        let scripted = ScriptedUpstream::spawn(fixture, listener)
            .map_err(|err| ModelError::Scripted(err.to_string()))?;
        let url = UpstreamUrl::parse(&scripted.base_url()).map_err(ModelError::BadUrl)?;
        let description = format!(
            "scripted upstream (fixture {:?}: replayed model turns, not a real model; set {BASE_URL_ENV} and {API_KEY_ENV} for one)",
            scripted.fixture().name
        );
        let gateway = Gateway::new(GatewayConfig::new(url, None), recorder)?;
        Ok(Self {
            gateway,
            scripted: Some(scripted),
            description,
        })
    }
}
