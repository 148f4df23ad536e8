//! Asking the host's resolver: one A query over UDP, again over TCP when the answer is truncated.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::DecodeError;
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout_at, Instant};

use super::answer::MAX_UDP_PAYLOAD;

/// Why upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("DNS exchange with {addr} over {proto} failed: {source}")]
    Io {
        addr: SocketAddr,
        proto: &'static str,
        source: io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("cannot read the answer of {addr}: {source}")]
    Decode {
        addr: SocketAddr,
        source: DecodeError,
    },
    #[error("{addr} answered over TCP with a different message id or question")]
    Mismatch { addr: SocketAddr },
    #[error("cannot encode a DNS query for {name}: {source}")]
    Encode { name: String, source: ProtoError },
}

/// Asks `upstream` for the A records of `name` with a fresh query, so nothing of the sandbox's
/// own packet (id, flags, EDNS options, letter case) reaches it.
pub(super) async fn resolve_a(
    upstream: SocketAddr,
    name: &Name,
    timeout: Duration,
) -> Result<Message, UpstreamError> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name.clone(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP_PAYLOAD);
    query.edns = Some(edns);
    let bytes = query.to_vec().map_err(|source| UpstreamError::Encode {
        name: name.to_string(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    let timed_out = |_| UpstreamError::Timeout {
        addr: upstream,
        timeout,
    };
    let answer = timeout_at(deadline, over_udp(upstream, &query, &bytes))
        .await
        .map_err(timed_out)??;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    timeout_at(deadline, over_tcp(upstream, &query, &bytes))
        .await
        .map_err(timed_out)?
}

/// Sends `bytes` from a fresh socket and waits for the matching answer. Datagrams that do not
/// match (another id or question: stale or spoofed) are skipped, as a stub resolver does.
async fn over_udp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> Result<Message, UpstreamError> {
    let io_err = |source| UpstreamError::Io {
        addr: upstream,
        proto: "udp",
        source,
    };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io_err)?;
    // Connected: the kernel drops datagrams from any other address.
    socket.connect(upstream).await.map_err(io_err)?;
    socket.send(bytes).await.map_err(io_err)?;
    let mut buf = vec![0u8; usize::from(MAX_UDP_PAYLOAD) * 4];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io_err)?;
        match Message::from_vec(&buf[..n]) {
            Ok(answer) if answers(query, &answer) => return Ok(answer),
            Ok(_) | Err(_) => {
                tracing::debug!(upstream = %upstream, "skipping a datagram that does not answer our query");
            }
        }
    }
}

/// The same query over TCP, for answers too large for UDP.
async fn over_tcp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> Result<Message, UpstreamError> {
    let io_err = |source| UpstreamError::Io {
        addr: upstream,
        proto: "tcp",
        source,
    };
    let mut stream = TcpStream::connect(upstream).await.map_err(io_err)?;
    let len = u16::try_from(bytes.len()).map_err(|_| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "query longer than 65535 bytes",
        ))
    })?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(io_err)?;
    let len = stream.read_u16().await.map_err(io_err)?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.map_err(io_err)?;
    let answer = Message::from_vec(&buf).map_err(|source| UpstreamError::Decode {
        addr: upstream,
        source,
    })?;
    if !answers(query, &answer) {
        return Err(UpstreamError::Mismatch { addr: upstream });
    }
    Ok(answer)
}

/// Whether `answer` is the response to `query`: same id, same question.
fn answers(query: &Message, answer: &Message) -> bool {
    answer.metadata.message_type == MessageType::Response
        && answer.metadata.id == query.metadata.id
        && answer.queries == query.queries
}
