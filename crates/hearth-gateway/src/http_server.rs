//! The HTTP/1 plumbing shared by the gateway and the scripted upstream: an accept loop and a
//! capped body reader.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Read(#[source] hyper::Error),
}

/// How much of an oversized body is read and thrown away before answering 413.
const DRAIN_MAX: usize = 64 << 20;

/// Reads a whole body, keeping at most `limit` bytes.
pub(crate) async fn read_capped<B>(mut body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue; // trailers carry nothing we use
        };
        if buf.len() + data.len() > limit {
            drain(body, buf.len() + data.len()).await;
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads the rest of an oversized body (up to [`DRAIN_MAX`]) so the client gets its 413:
/// clients that send the whole body before reading (Python's urllib, the agent's) see a broken
/// pipe instead if the server closes with unread data.
async fn drain<B>(mut body: B, mut seen: usize)
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    while seen < DRAIN_MAX {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

/// Accepts connections forever, serving each with `handler` on its own task. Accept errors
/// (such as running out of file descriptors) are logged and retried after a pause rather than
/// ending the listener, which the host relies on for the sandbox's lifetime.
pub(crate) async fn serve<H, F>(listener: TcpListener, header_timeout: Duration, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small request/response exchanges: Nagle's delay would dominate the latency.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "TCP_NODELAY failed");
        }
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let reply = handler(request, peer);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
}
