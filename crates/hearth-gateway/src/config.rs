//! Gateway configuration: the upstream's URL and API key, limits and timeouts.

use std::fmt;
use std::time::Duration;

use http::uri::{Scheme, Uri};
use http::HeaderValue;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("upstream URL {url:?} is not a valid URL: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("upstream URL {url:?} must start with http:// or https://")]
    BadScheme { url: String },
    #[error("upstream URL {url:?} has a query or fragment; give the API's base URL, e.g. https://api.openai.com/v1")]
    HasQuery { url: String },
    #[error("upstream URL {url:?} has credentials in it; pass the API key separately")]
    HasUserinfo { url: String },
    // The key itself is never part of the message.
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    BadApiKey,
}

/// The real upstream API key. Only the gateway's upstream client reads it; `Debug` hides it.
#[derive(Clone)]
pub struct ApiKey {
    text: String,
    header: HeaderValue,
}

impl ApiKey {
    pub fn new(text: impl Into<String>) -> Result<Self, ConfigError> {
        let text = text.into();
        let mut header =
            HeaderValue::try_from(format!("Bearer {text}")).map_err(|_| ConfigError::BadApiKey)?;
        // Sensitive headers are kept out of hyper's own debug output and HPACK tables.
        header.set_sensitive(true);
        Ok(Self { text, header })
    }

    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// An upstream API base URL in OpenAI's convention, the `/v1` included:
/// `https://api.openai.com/v1`, `http://127.0.0.1:8000/v1` (vLLM), `http://127.0.0.1:11434/v1`
/// (Ollama). Endpoints are appended to it: `{base}/chat/completions`, `{base}/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    base: String,
}

impl UpstreamUrl {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let uri: Uri = raw.parse().map_err(|source| ConfigError::BadUrl {
            url: raw.to_owned(),
            source,
        })?;
        let scheme_ok = uri.scheme() == Some(&Scheme::HTTP) || uri.scheme() == Some(&Scheme::HTTPS);
        if !scheme_ok || uri.authority().is_none() {
            return Err(ConfigError::BadScheme {
                url: raw.to_owned(),
            });
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // Errors and logs name the URL; credentials in it would end up there.
            return Err(ConfigError::HasUserinfo {
                url: "<redacted>".to_owned(),
            });
        }
        if uri.query().is_some() || raw.contains('#') {
            return Err(ConfigError::HasQuery {
                url: raw.to_owned(),
            });
        }
        Ok(Self {
            base: raw.trim_end_matches('/').to_owned(),
        })
    }

    /// `{base}/{endpoint}`; the result is valid because the base was and `endpoint` is a
    /// constant path from this crate.
    pub(crate) fn endpoint(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.base)
    }

    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// Everything a [`crate::Gateway`] needs; [`GatewayConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub upstream_url: UpstreamUrl,
    /// `None` for local servers that want no key (Ollama, llama.cpp); the caller's
    /// Authorization header is then dropped, not forwarded.
    pub api_key: Option<ApiKey>,
    /// Whole upstream exchange: connect, request, complete response. Generous, because a long
    /// completion from a slow local model can take minutes.
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// Request bodies larger than this get 413.
    pub max_request_bytes: usize,
    /// Upstream responses larger than this get 502 (a chat completion is kilobytes).
    pub max_response_bytes: usize,
    /// Request and response JSON kept in a [`crate::GatewayCall`] is cut at this size.
    pub record_cap_bytes: usize,
    /// Calls of one task in flight at once; bounds the budget overshoot (see [`crate::budget`]).
    pub max_in_flight_per_task: u32,
    /// Time a client gets to send its request headers, so idle connections from a sandbox
    /// cannot pile up.
    pub header_read_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(upstream_url: UpstreamUrl, api_key: Option<ApiKey>) -> Self {
        Self {
            upstream_url,
            api_key,
            upstream_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            max_request_bytes: 4 << 20,
            max_response_bytes: 16 << 20,
            record_cap_bytes: 64 << 10,
            max_in_flight_per_task: 4,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_checked_and_endpoints_appended() {
        let url = UpstreamUrl::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            url.endpoint("chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert!(matches!(
            UpstreamUrl::parse("ftp://x/v1"),
            Err(ConfigError::BadScheme { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("/v1"),
            Err(ConfigError::BadScheme { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://x/v1?a=b"),
            Err(ConfigError::HasQuery { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://user:pw@x/v1"),
            Err(ConfigError::HasUserinfo { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://x y"),
            Err(ConfigError::BadUrl { .. })
        ));
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let key = ApiKey::new("sk-very-secret").unwrap();
        let shown = format!(
            "{key:?} {:?}",
            GatewayConfig::new(
                UpstreamUrl::parse("http://x/v1").unwrap(),
                Some(key.clone())
            )
        );
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(matches!(
            ApiKey::new("bad\nkey"),
            Err(ConfigError::BadApiKey)
        ));
    }
}
