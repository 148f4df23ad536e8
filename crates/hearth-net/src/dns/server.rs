//! The resolver's sockets and tasks: one thread with a small tokio runtime per sandbox.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::timeout;

use super::answer::{encode, from_upstream, judge, reply, Pending, TtlBounds, Verdict};
use super::config::{Grant, ResolverConfig};
use super::nftset::{add_elements, SetElement};
use super::upstream::resolve_a;
use super::DnsError;
use crate::nft::Nft;

/// The largest query read, over UDP or TCP. Real queries are a few dozen bytes; a longer
/// datagram is cut here and then fails to parse.
const MAX_QUERY: usize = 4096;
/// How long a TCP client may sit idle between queries, or take to send one.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Starts resolvers; see the [module docs](super).
#[derive(Debug)]
pub struct SandboxResolver;

impl SandboxResolver {
    /// Binds UDP and TCP on `config.listen` (port 0: any free port, the same for both) and
    /// serves on a thread of its own until [`ResolverHandle::stop`] or the handle is dropped.
    /// Works from sync code and from inside a tokio runtime alike.
    pub fn start(config: ResolverConfig) -> Result<ResolverHandle, DnsError> {
        let grants = config.grants()?;
        let nft = Nft::new(&config.nft)?;
        let bind_err = |proto, source| DnsError::Bind {
            addr: config.listen,
            proto,
            source,
        };
        let udp = std::net::UdpSocket::bind(config.listen).map_err(|e| bind_err("udp", e))?;
        let addr = udp.local_addr().map_err(|e| bind_err("udp", e))?;
        let tcp = std::net::TcpListener::bind(addr).map_err(|e| bind_err("tcp", e))?;
        udp.set_nonblocking(true).map_err(|e| bind_err("udp", e))?;
        tcp.set_nonblocking(true).map_err(|e| bind_err("tcp", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| DnsError::Runtime { addr, source })?;
        let stats = Arc::new(Counters::default());
        let state = Arc::new(State {
            grants,
            upstream: config.upstream,
            upstream_timeout: config.upstream_timeout,
            ttl: TtlBounds {
                min: config.min_ttl,
                max: config.max_ttl,
            },
            table: config.table,
            nft: Arc::new(nft),
            queries: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            tcp_connections: Arc::new(Semaphore::new(config.max_tcp_connections.max(1))),
            rate: std::sync::Mutex::new(TokenBucket::new(config.max_queries_per_second)),
            stats: stats.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("hearth-dns".to_owned())
            .spawn(move || runtime.block_on(serve(state, udp, tcp, stopped)))
            .map_err(|source| DnsError::Runtime { addr, source })?;
        tracing::info!(listen = %addr, upstream = %config.upstream, "sandbox DNS resolver started");
        Ok(ResolverHandle {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            stats,
        })
    }
}

/// A running resolver. Dropping it stops the resolver too.
#[derive(Debug)]
pub struct ResolverHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Counters>,
}

impl ResolverHandle {
    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> ResolverStats {
        self.stats.snapshot()
    }

    /// Stops serving and waits for the thread; queries in flight are abandoned.
    pub fn stop(mut self) -> Result<(), DnsError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), DnsError> {
        if let Some(stop) = self.stop.take() {
            // An error means the loop has already ended.
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(DnsError::ThreadPanicked { addr: self.addr }),
            _ => Ok(()),
        }
    }
}

impl Drop for ResolverHandle {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::error!(error = %err, "sandbox DNS resolver ended badly");
        }
    }
}

/// What a resolver has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResolverStats {
    /// Allowed names answered from upstream (their addresses now in the sets).
    pub answered: u64,
    /// Names not on the allowlist, answered NXDOMAIN without asking upstream.
    pub denied: u64,
    /// Allowed names answered SERVFAIL: upstream or nft failed.
    pub failed: u64,
    /// Packets that were no proper query: ignored, FORMERR or NOTIMP.
    pub malformed: u64,
    /// Queries dropped because too many were in flight.
    pub shed: u64,
    /// Queries dropped over the rate limit.
    pub limited: u64,
}

#[derive(Debug, Default)]
struct Counters {
    answered: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    malformed: AtomicU64,
    shed: AtomicU64,
    limited: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ResolverStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ResolverStats {
            answered: get(&self.answered),
            denied: get(&self.denied),
            failed: get(&self.failed),
            malformed: get(&self.malformed),
            shed: get(&self.shed),
            limited: get(&self.limited),
        }
    }
}

/// Everything a query needs, shared by the resolver's tasks.
#[derive(Debug)]
struct State {
    grants: HashMap<String, Grant>,
    upstream: SocketAddr,
    upstream_timeout: Duration,
    ttl: TtlBounds,
    table: String,
    nft: Arc<Nft>,
    queries: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
    rate: std::sync::Mutex<TokenBucket>,
    stats: Arc<Counters>,
}

/// A token bucket: `per_second` tokens a second, holding at most a second's worth.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last: std::time::Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The accept loops, until `stopped` fires (or its sender is dropped).
async fn serve(
    state: Arc<State>,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    mut stopped: oneshot::Receiver<()>,
) {
    let (udp, tcp) = match (UdpSocket::from_std(udp), TcpListener::from_std(tcp)) {
        (Ok(udp), Ok(tcp)) => (Arc::new(udp), tcp),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(table = %state.table, error = %err, "cannot register the resolver's sockets");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            received = udp.recv_from(&mut buf) => match received {
                Ok((n, from)) => state.spawn_udp(&udp, buf[..n].to_vec(), from),
                // ICMP errors of earlier replies surface here; the socket itself is fine.
                Err(err) => tracing::debug!(table = %state.table, error = %err, "UDP receive failed"),
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, from)) => state.spawn_tcp(stream, from),
                Err(err) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(table = %state.table, error = %err, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!(table = %state.table, "sandbox DNS resolver stopped");
}

impl State {
    /// Answers one datagram on a task of its own, or drops it when too many are in flight (the
    /// client retries; queueing would only let a flood build up).
    fn spawn_udp(self: &Arc<Self>, socket: &Arc<UdpSocket>, packet: Vec<u8>, from: SocketAddr) {
        let Ok(permit) = self.queries.clone().try_acquire_owned() else {
            Counters::bump(&self.stats.shed);
            return;
        };
        let (state, socket) = (self.clone(), socket.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = state.answer(&packet, true).await {
                if let Err(err) = socket.send_to(&reply, from).await {
                    tracing::debug!(table = %state.table, to = %from, error = %err, "UDP reply failed");
                }
            }
        });
    }

    fn spawn_tcp(self: &Arc<Self>, stream: TcpStream, from: SocketAddr) {
        let Ok(permit) = self.tcp_connections.clone().try_acquire_owned() else {
            Counters::bump(&self.stats.shed);
            return;
        };
        let state = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            state.serve_tcp(stream, from).await;
        });
    }

    /// Length-prefixed queries on one connection (RFC 7766), answered in order, until the
    /// client closes, idles out or sends something that cannot be a query.
    async fn serve_tcp(&self, mut stream: TcpStream, from: SocketAddr) {
        loop {
            let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else {
                return;
            };
            let len = usize::from(len);
            if len == 0 || len > MAX_QUERY {
                Counters::bump(&self.stats.malformed);
                return;
            }
            let mut packet = vec![0u8; len];
            if !matches!(
                timeout(TCP_IDLE, stream.read_exact(&mut packet)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            let Ok(_permit) = self.queries.acquire().await else {
                return;
            };
            let Some(reply) = self.answer(&packet, false).await else {
                continue;
            };
            let Ok(prefix) = u16::try_from(reply.len()) else {
                return;
            };
            let mut framed = prefix.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if !matches!(
                timeout(TCP_IDLE, stream.write_all(&framed)).await,
                Ok(Ok(()))
            ) {
                tracing::debug!(table = %self.table, from = %from, "TCP reply failed");
                return;
            }
        }
    }

    /// The encoded reply to `packet`, if it gets one.
    async fn answer(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let allowed = self
            .rate
            .lock()
            .map(|mut bucket| bucket.take())
            .unwrap_or(false);
        if !allowed {
            Counters::bump(&self.stats.limited);
            return None;
        }
        let (message, udp_limit) = match judge(packet, &self.grants) {
            Verdict::Ignore => {
                Counters::bump(&self.stats.malformed);
                return None;
            }
            Verdict::Reply { message, udp_limit } => {
                self.count_local(&message);
                (message, udp_limit)
            }
            Verdict::Forward(pending) => (self.forward(&pending).await, pending.udp_limit),
        };
        encode(&message, udp.then_some(udp_limit))
    }

    fn count_local(&self, message: &Message) {
        if message.metadata.response_code == ResponseCode::NXDomain {
            Counters::bump(&self.stats.denied);
            if let Some(query) = message.queries.first() {
                tracing::debug!(table = %self.table, name = %query.name(), "denied a DNS name");
            }
        } else if message.metadata.response_code != ResponseCode::NoError {
            Counters::bump(&self.stats.malformed);
        }
    }

    /// Asks upstream, opens the answer's addresses, and only then returns the reply.
    async fn forward(&self, pending: &Pending) -> Message {
        let name = &pending.name;
        let answer = match resolve_a(self.upstream, name, self.upstream_timeout).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(table = %self.table, name = %name, error = %err, "upstream DNS failed");
                Counters::bump(&self.stats.failed);
                return reply(&pending.request, ResponseCode::ServFail);
            }
        };
        let (message, elements) = from_upstream(pending, &answer, self.ttl);
        let opened = elements.len();
        if let Err(err) = self.open(elements).await {
            tracing::warn!(table = %self.table, name = %name, error = %err, "cannot open DNS answers in nft");
            Counters::bump(&self.stats.failed);
            return reply(&pending.request, ResponseCode::ServFail);
        }
        Counters::bump(&self.stats.answered);
        tracing::debug!(table = %self.table, name = %name, opened, "answered an allowed DNS name");
        message
    }

    /// Adds `elements` to the sets; libnftables blocks, so it runs off the runtime's thread.
    async fn open(&self, elements: Vec<SetElement>) -> Result<(), DnsError> {
        if elements.is_empty() {
            return Ok(());
        }
        let (nft, table) = (self.nft.clone(), self.table.clone());
        tokio::task::spawn_blocking(move || add_elements(&nft, &table, &elements))
            .await
            .map_err(|source| DnsError::NftTask {
                table: self.table.clone(),
                source,
            })??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;

    #[test]
    fn the_bucket_gives_a_seconds_worth_then_refills_with_time() {
        let mut bucket = TokenBucket::new(5);
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 5);
        bucket.last -= std::time::Duration::from_millis(400);
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 2);
    }
}
