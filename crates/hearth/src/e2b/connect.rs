//! The Connect protocol (connectrpc.com/docs/protocol), as much of it as E2B's envd clients use:
//! the JSON codec, no compression, unary calls and streams in either direction over HTTP/1.1.
//!
//! Why not a crate: E2B's SDKs speak only Connect+JSON (`useBinaryFormat: false`, and the Python
//! SDK's own JSON codec), so no protobuf runtime or code generator is needed; the framing is a
//! 5-byte prefix per message. The `connectrpc` crate would bring protobuf types and generated
//! code for a codec nobody here sends, and still leave the mapping onto hearth-guest to us.
//!
//! - Unary: `POST /pkg.Service/Method`, `Content-Type: application/json`, the message as the
//!   body; the answer is 200 with the message, or an error status with
//!   `{"code":"not_found","message":..}`.
//! - Streams: `Content-Type: application/connect+json`; each message is an envelope
//!   `[flags u8][length u32 BE][JSON]`, and a stream ends with an envelope of flag `0x02`
//!   holding `{}` or `{"error":{..}}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

pub const UNARY_JSON: &str = "application/json";
pub const STREAM_JSON: &str = "application/connect+json";
/// Largest request message: SendInput carries stdin, the biggest thing a client sends here.
pub const MAX_MESSAGE: usize = 16 << 20;
const END_STREAM: u8 = 0x02;
const COMPRESSED: u8 = 0x01;

/// Connect's error codes (the ones hearth answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error (the protocol's table).
    fn status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An error answered to a Connect client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn body(&self) -> serde_json::Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        (
            self.code.status(),
            [(header::CONTENT_TYPE, UNARY_JSON)],
            Body::from(body),
        )
            .into_response()
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}

/// Compression is neither offered nor accepted: a client that compresses anyway is told so.
fn check_identity(headers: &HeaderMap, name: &str) -> Result<(), ConnectError> {
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Ok(()),
        Some(other) => Err(ConnectError::new(
            Code::Unimplemented,
            format!("{name} {other:?} is not supported; send uncompressed messages"),
        )),
    }
}

fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ConnectError> {
    serde_json::from_slice(raw)
        .map_err(|err| ConnectError::new(Code::InvalidArgument, format!("request message: {err}")))
}

/// The message of a unary call.
pub async fn unary_request<T: DeserializeOwned>(request: Request) -> Result<T, ConnectError> {
    let headers = request.headers();
    if content_type(headers) != UNARY_JSON {
        return Err(ConnectError::new(
            Code::Unimplemented,
            format!(
                "content type {:?}: only the JSON codec ({UNARY_JSON}) is served",
                content_type(headers)
            ),
        ));
    }
    check_identity(headers, header::CONTENT_ENCODING.as_str())?;
    let raw = http_body_util::Limited::new(request.into_body(), MAX_MESSAGE)
        .collect()
        .await
        .map_err(|err| ConnectError::new(Code::ResourceExhausted, format!("request: {err}")))?
        .to_bytes();
    if raw.is_empty() {
        return decode(b"{}");
    }
    decode(&raw)
}

/// A unary answer.
pub fn unary_response<T: Serialize>(result: Result<T, ConnectError>) -> Response {
    match result {
        Ok(message) => {
            let body = serde_json::to_vec(&message).unwrap_or_default();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, UNARY_JSON)],
                Body::from(body),
            )
                .into_response()
        }
        Err(err) => err.into_response(),
    }
}

/// Reads the envelopes of a streaming request one message at a time.
pub struct EnvelopeReader {
    body: axum::body::BodyDataStream,
    buffer: Vec<u8>,
    done: bool,
}

impl EnvelopeReader {
    pub fn new(request: Request) -> Result<Self, ConnectError> {
        let headers = request.headers();
        if content_type(headers) != STREAM_JSON {
            return Err(ConnectError::new(
                Code::Unimplemented,
                format!(
                    "content type {:?}: streams are served with {STREAM_JSON} only",
                    content_type(headers)
                ),
            ));
        }
        check_identity(headers, "connect-content-encoding")?;
        Ok(Self {
            body: request.into_body().into_data_stream(),
            buffer: Vec::new(),
            done: false,
        })
    }

    /// The next message, `None` at the end of the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectError> {
        loop {
            if self.buffer.len() >= 5 {
                let flags = self.buffer[0];
                let len = u32::from_be_bytes([
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                    self.buffer[4],
                ]) as usize;
                if len > MAX_MESSAGE {
                    return Err(ConnectError::new(
                        Code::ResourceExhausted,
                        format!("a message of {len} bytes is over the {MAX_MESSAGE}-byte limit"),
                    ));
                }
                if self.buffer.len() >= 5 + len {
                    let message: Vec<u8> = self.buffer.drain(..5 + len).skip(5).collect();
                    if flags & COMPRESSED != 0 {
                        return Err(ConnectError::new(
                            Code::Unimplemented,
                            "compressed messages are not supported",
                        ));
                    }
                    if flags & END_STREAM != 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    return decode(&message).map(Some);
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    return Err(ConnectError::new(
                        Code::Canceled,
                        format!("request stream: {err}"),
                    ))
                }
                None => {
                    self.done = true;
                    if self.buffer.is_empty() {
                        return Ok(None);
                    }
                    return Err(ConnectError::new(
                        Code::InvalidArgument,
                        "the request stream ended inside a message",
                    ));
                }
            }
        }
    }
}

/// The one message of a server-streaming call.
pub async fn stream_request<T: DeserializeOwned>(request: Request) -> Result<T, ConnectError> {
    let mut reader = EnvelopeReader::new(request)?;
    reader.next().await?.ok_or_else(|| {
        ConnectError::new(Code::InvalidArgument, "the request stream had no message")
    })
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// What a streaming handler sends: messages, then the end (`Ok` or the error).
#[derive(Debug)]
pub enum StreamItem {
    Message(serde_json::Value),
    End(Result<(), ConnectError>),
}

/// A streaming answer fed from `rx`; the end-of-stream envelope follows the last message (an
/// `End`, or the sender going away, which counts as a clean end).
pub fn stream_response(mut rx: mpsc::Receiver<StreamItem>) -> Response {
    let stream = async_stream_body(
        move |tx: mpsc::Sender<Result<Bytes, Infallible>>| async move {
            let mut end = Ok(());
            while let Some(item) = rx.recv().await {
                match item {
                    StreamItem::Message(message) => {
                        let payload = serde_json::to_vec(&message).unwrap_or_default();
                        if tx.send(Ok(envelope(0, &payload))).await.is_err() {
                            return;
                        }
                    }
                    StreamItem::End(result) => {
                        end = result;
                        break;
                    }
                }
            }
            let trailer = match end {
                Ok(()) => json!({}),
                Err(err) => json!({"error": err.body()}),
            };
            let payload = serde_json::to_vec(&trailer).unwrap_or_default();
            let _ = tx.send(Ok(envelope(END_STREAM, &payload))).await;
        },
    );
    let mut response = Response::new(stream);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(STREAM_JSON));
    response
}

/// A body whose chunks `produce` sends; it stops producing when the client goes away.
fn async_stream_body<F, Fut>(produce: F) -> Body
where
    F: FnOnce(mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(produce(tx));
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from(
    rx: mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// The client's deadline for this call (`Connect-Timeout-Ms`), if it set one.
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// A server stream that ends at once with `err` (how a streaming call is refused).
pub fn stream_error(err: ConnectError) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(StreamItem::End(Err(err)));
    stream_response(rx)
}

/// The shape of E2B's long server streams (`Start`, `Connect`, `WatchDir`): `first`, then what
/// `map` makes of each item from `source` (messages, and an `End` that closes the stream; `None`
/// is the source gone), `keepalive` every `Keepalive-Ping-Interval`, and `on_deadline` at the
/// client's `Connect-Timeout-Ms`. `guard` lives as long as the stream (drop it to stop what
/// feeds `source`); a client that hangs up ends the stream.
pub fn forward<T, G>(
    headers: &HeaderMap,
    first: serde_json::Value,
    mut source: mpsc::UnboundedReceiver<T>,
    mut map: impl FnMut(Option<T>) -> Vec<StreamItem> + Send + 'static,
    keepalive_message: serde_json::Value,
    on_deadline: ConnectError,
    guard: G,
) -> Response
where
    T: Send + 'static,
    G: Send + 'static,
{
    let deadline = deadline(headers).map(|d| tokio::time::Instant::now() + d);
    let every = keepalive(headers);
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _guard = guard;
        if tx.send(StreamItem::Message(first)).await.is_err() {
            return;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let items = tokio::select! {
                item = source.recv() => map(item),
                _ = ticks.tick() => vec![StreamItem::Message(keepalive_message.clone())],
                () = until(deadline) => vec![StreamItem::End(Err(on_deadline.clone()))],
            };
            for item in items {
                let last = matches!(item, StreamItem::End(_));
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        }
    });
    stream_response(rx)
}

/// Sleeps until `deadline`, or forever without one (for `select!` arms of a call's deadline).
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How often a stream sends a keepalive message (`Keepalive-Ping-Interval`, seconds; E2B's SDKs
/// send 50).
pub fn keepalive(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(50);
    Duration::from_secs(secs.clamp(1, 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: &str, body: Vec<u8>) -> Request {
        Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn envelopes_split_across_chunks_are_read_in_order() {
        let mut raw = envelope(0, br#"{"a":1}"#).to_vec();
        raw.extend_from_slice(&envelope(0, br#"{"a":2}"#));
        raw.extend_from_slice(&envelope(END_STREAM, b"{}"));
        // One byte per chunk: the reader must reassemble.
        let chunks: Vec<Result<Bytes, Infallible>> =
            raw.iter().map(|b| Ok(Bytes::from(vec![*b]))).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let req = Request::builder()
            .header(header::CONTENT_TYPE, STREAM_JSON)
            .body(body)
            .unwrap();
        let mut reader = EnvelopeReader::new(req).unwrap();
        let first: serde_json::Value = reader.next().await.unwrap().unwrap();
        let second: serde_json::Value = reader.next().await.unwrap().unwrap();
        assert_eq!(
            (first["a"].as_i64(), second["a"].as_i64()),
            (Some(1), Some(2))
        );
        assert!(reader.next::<serde_json::Value>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wrong_codec_compression_and_torn_messages_are_refused() {
        let err = unary_request::<serde_json::Value>(request("application/proto", vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unimplemented);
        let mut compressed = envelope(COMPRESSED, b"x").to_vec();
        compressed.truncate(6);
        let err = stream_request::<serde_json::Value>(request(STREAM_JSON, compressed))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unimplemented);
        let torn = envelope(0, br#"{"a":1}"#)[..7].to_vec();
        let err = stream_request::<serde_json::Value>(request(STREAM_JSON, torn))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff].to_vec();
        let err = stream_request::<serde_json::Value>(request(STREAM_JSON, huge))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_stream_ends_with_its_error_in_the_trailer() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(StreamItem::Message(json!({"n": 1}))).await.unwrap();
        tx.send(StreamItem::End(Err(ConnectError::new(
            Code::NotFound,
            "gone",
        ))))
        .await
        .unwrap();
        let response = stream_response(rx);
        assert_eq!(response.headers()[header::CONTENT_TYPE], STREAM_JSON);
        let raw = response.into_body().collect().await.unwrap().to_bytes();
        let first_len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
        assert_eq!(raw[0], 0);
        let trailer = &raw[5 + first_len..];
        assert_eq!(trailer[0], END_STREAM);
        let end: serde_json::Value = serde_json::from_slice(&trailer[5..]).unwrap();
        assert_eq!(end["error"]["code"], "not_found");
    }
}
