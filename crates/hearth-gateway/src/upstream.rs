//! The client for the configured upstream: HTTP or HTTPS (rustls with the webpki roots), pooled
//! keep-alive connections, the real API key added here and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{ApiKey, GatewayConfig, UpstreamUrl};
use crate::http_server::{read_capped, BodyError};

/// Upstream failures. Each names the endpoint URL, which never holds a credential
/// ([`UpstreamUrl`] refuses user-info), and none carries the key.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("setting up TLS for the upstream client failed: {0}")]
    Tls(#[source] rustls::Error),
    #[error("building the request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("upstream {url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("reading the response of upstream {url} failed")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream {url} sent a response larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

/// A complete upstream response.
#[derive(Debug)]
pub(crate) struct UpstreamReply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) body: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: UpstreamUrl,
    key: Option<ApiKey>,
    timeout: Duration,
    max_response_bytes: usize,
}

impl Upstream {
    pub(crate) fn new(config: &GatewayConfig) -> Result<Self, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false); // the TLS layer above handles https:// URLs
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        // An explicit provider, so another crate enabling a second rustls backend in the same
        // binary cannot make the process-default lookup ambiguous.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(UpstreamError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            base: config.upstream_url.clone(),
            key: config.api_key.clone(),
            timeout: config.upstream_timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// One exchange with `{base}/{endpoint}`, bounded by the upstream timeout as a whole.
    pub(crate) async fn send(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Bytes>,
    ) -> Result<UpstreamReply, UpstreamError> {
        let url = self.base.endpoint(endpoint);
        match tokio::time::timeout(self.timeout, self.exchange(method, &url, body)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                url,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<UpstreamReply, UpstreamError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header(ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some(key) = &self.key {
            builder = builder.header(AUTHORIZATION, key.header().clone());
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|source| UpstreamError::Request {
                url: url.to_owned(),
                source,
            })?;
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| UpstreamError::Unreachable {
                    url: url.to_owned(),
                    source,
                })?;
        let (parts, incoming) = response.into_parts();
        let body = read_capped(incoming, self.max_response_bytes)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge { limit } => UpstreamError::TooLarge {
                    url: url.to_owned(),
                    limit,
                },
                BodyError::Read(source) => UpstreamError::Body {
                    url: url.to_owned(),
                    source,
                },
            })?;
        Ok(UpstreamReply {
            status: parts.status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            body,
        })
    }
}
