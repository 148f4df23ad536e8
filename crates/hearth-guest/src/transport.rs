//! Where the guest protocol is served: a Unix socket (OCI sandboxes), a virtio-serial port
//! (QEMU without vhost-vsock) or an AF_VSOCK port (Firecracker, QEMU with vhost-vsock).
//!
//! A virtio-serial port is one byte stream for the VM's whole life, so it carries a single
//! HTTP/2 connection that multiplexes the host relay's requests. When a session ends (the host
//! went away, or sent something broken) the guest discards bytes until the next HTTP/2 client
//! preface, where a fresh session starts: host disconnects and connects are not ordered with
//! the data around them, so a new client's first bytes can reach the old session. Once a
//! preface is found, the port is closed and opened again (what was queued is read first) so
//! that the guest's open follows the host's connect, the only order in which the guest's
//! writes keep flowing (see [`FdStream::reopen_with`]).
//! Unix and vsock sockets take one HTTP/1.1 connection per request.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    /// A Unix socket the host bound and listens on, inherited as this fd (OCI sandboxes: the
    /// socket file stays on the host, where nothing in the sandbox can replace it).
    UnixFd(i32),
    /// A virtio-serial port by its name (`/sys/class/virtio-ports/*/name`).
    VirtioSerial(String),
    Vsock(u32),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::UnixFd(fd) => write!(f, "unix-fd:{fd}"),
            Listen::VirtioSerial(name) => write!(f, "virtio-serial:{name}"),
            Listen::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

/// A transport that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no virtio-serial port named {0} under /sys/class/virtio-ports")]
    NoPort(String),
    #[error("vsock port {port}: {op}: {source}")]
    Vsock {
        port: u32,
        op: &'static str,
        source: nix::Error,
    },
}

/// A nonblocking stream fd (a virtio port or an accepted vsock socket) driven by the reactor,
/// optionally replaying bytes already read from it before reading more.
#[derive(Debug)]
pub struct FdStream {
    fd: std::sync::Arc<AsyncFd<OwnedFd>>,
    replay: Vec<u8>,
    /// Set on HTTP/2 sessions of a virtio port: where a new client's preface goes when it
    /// shows up in the middle of this session (which then ends).
    takeover: Option<Takeover>,
}

#[derive(Debug)]
struct Takeover {
    carry: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// The last bytes read, to catch a preface split across reads.
    tail: Vec<u8>,
    ended: bool,
}

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl FdStream {
    /// `fd` must already be in nonblocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: std::sync::Arc::new(register(fd)?),
            replay: Vec::new(),
            takeover: None,
        })
    }

    /// Reads and drops bytes until an HTTP/2 client preface; returns a stream on the same fd
    /// that yields the preface and what followed it, then the fd's further bytes. A read of 0
    /// (no host connected on a virtio port) waits and tries again.
    pub async fn next_h2_session(&mut self) -> io::Result<FdStream> {
        use tokio::io::AsyncReadExt as _;
        let mut window = std::mem::take(&mut self.replay);
        // The port itself never scans; it only remembers the last session's carry.
        if let Some(old) = self.takeover.take() {
            // What the previous session left: a new client's preface and what followed.
            if let Ok(mut carry) = old.carry.lock() {
                window.append(&mut carry);
            }
        }
        let carry = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if let Some(at) = find(&window, H2_PREFACE) {
                self.takeover = Some(Takeover {
                    carry: std::sync::Arc::clone(&carry),
                    tail: Vec::new(),
                    ended: false,
                });
                return Ok(FdStream {
                    fd: std::sync::Arc::clone(&self.fd),
                    replay: window.split_off(at),
                    takeover: Some(Takeover {
                        carry,
                        tail: Vec::new(),
                        ended: false,
                    }),
                });
            }
            // Keep only what could be the start of a preface split across reads.
            let keep = window.len().min(H2_PREFACE.len() - 1);
            window.drain(..window.len() - keep);
            match self.read(&mut chunk).await? {
                0 => tokio::time::sleep(Duration::from_millis(20)).await,
                n => window.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

impl FdStream {
    /// Closes and reopens this port under `session` (which came from its
    /// [`Self::next_h2_session`]) so that the guest's open follows the host's connect; returns
    /// the port and the session on the new descriptor.
    ///
    /// A host that connects to QEMU's chardev after the guest has opened the port gets the
    /// session's first write and then nothing: the guest's later writes stay queued (EAGAIN,
    /// the port reporting the host as gone) until the host connects again, when they reach
    /// the new client as garbage. A host connected before the guest opens the port works. So
    /// each session starts on a fresh open. Bytes already queued in the guest are read first
    /// and kept for the session; while the port is closed QEMU holds back what the host sends.
    /// On error the port is closed and must be opened again.
    pub fn reopen_with(self, session: FdStream, node: &Path) -> io::Result<(FdStream, FdStream)> {
        let FdStream {
            fd,
            replay: port_replay,
            takeover: port_takeover,
        } = self;
        let FdStream {
            fd: session_fd,
            mut replay,
            takeover,
        } = session;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match nix::unistd::read(fd.get_ref().as_raw_fd(), &mut chunk) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => break,
                Ok(n) => replay.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        // Both handles must go for the port to close (the kernel allows one open at a time).
        drop(session_fd);
        drop(fd);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(node)?;
        let fresh = std::sync::Arc::new(register(OwnedFd::from(file))?);
        let port = FdStream {
            fd: std::sync::Arc::clone(&fresh),
            replay: port_replay,
            takeover: port_takeover,
        };
        let session = FdStream {
            fd: fresh,
            replay,
            takeover,
        };
        Ok((port, session))
    }
}

impl Takeover {
    /// Checks freshly read bytes for a new client's preface; returns how many belong to the
    /// current session. From a preface on, the bytes go to `carry` and the session sees EOF.
    fn scan(&mut self, fresh: &[u8]) -> usize {
        let mut joined = std::mem::take(&mut self.tail);
        let from_tail = joined.len();
        joined.extend_from_slice(fresh);
        let Some(at) = find(&joined, H2_PREFACE) else {
            let keep = joined.len().min(H2_PREFACE.len() - 1);
            self.tail = joined.split_off(joined.len() - keep);
            return fresh.len();
        };
        if let Ok(mut carry) = self.carry.lock() {
            carry.extend_from_slice(&joined[at..]);
        }
        self.ended = true;
        at.saturating_sub(from_tail)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Hands `fd` to the reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that it alone closes, on drop, and its
    // `as_raw_fd` always returns that same descriptor; the AsyncFd owns it from here on.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.takeover.as_ref().is_some_and(|t| t.ended) {
            return Poll::Ready(Ok(()));
        }
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.drain(..n);
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    let keep = match &mut this.takeover {
                        Some(takeover) => takeover.scan(&unfilled[..n]),
                        None => n,
                    };
                    buf.advance(keep);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A superseded session's last words (a GOAWAY) would reach the new client first.
        if self.takeover.as_ref().is_some_and(|t| t.ended) {
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The `/dev` node of the virtio-serial port called `name`, made from its sysfs `dev` numbers
/// when devtmpfs has not created it.
pub fn find_serial_port(name: &str) -> Result<PathBuf, TransportError> {
    let class = Path::new("/sys/class/virtio-ports");
    let read = std::fs::read_dir(class).map_err(|source| TransportError::Io {
        op: "read",
        path: class.to_path_buf(),
        source,
    })?;
    for entry in read.filter_map(Result::ok) {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() != name {
            continue;
        }
        let node = Path::new("/dev").join(entry.file_name());
        if !node.exists() {
            let dev_file = entry.path().join("dev");
            let numbers =
                std::fs::read_to_string(&dev_file).map_err(|source| TransportError::Io {
                    op: "read",
                    path: dev_file.clone(),
                    source,
                })?;
            let (major, minor) = numbers.trim().split_once(':').unwrap_or(("", ""));
            let bad = || TransportError::Io {
                op: "parse",
                path: dev_file.clone(),
                source: io::Error::from(io::ErrorKind::InvalidData),
            };
            let dev = nix::sys::stat::makedev(
                major.parse().map_err(|_| bad())?,
                minor.parse().map_err(|_| bad())?,
            );
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                dev,
            )
            .map_err(|e| TransportError::Io {
                op: "mknod",
                path: node.clone(),
                source: e.into(),
            })?;
        }
        return Ok(node);
    }
    Err(TransportError::NoPort(name.to_string()))
}

/// Opens the port; [`FdStream::next_h2_session`] then waits for a host to speak.
pub fn open_serial_port(node: &Path) -> Result<FdStream, TransportError> {
    let io_err = |op| {
        move |source| TransportError::Io {
            op,
            path: node.to_path_buf(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(node)
        .map_err(io_err("open"))?;
    FdStream::new(OwnedFd::from(file)).map_err(io_err("register"))
}

use std::os::unix::fs::OpenOptionsExt as _;

/// An AF_VSOCK listener on `port` for any CID.
#[derive(Debug)]
pub struct VsockListener {
    port: u32,
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    pub fn bind(port: u32) -> Result<Self, TransportError> {
        let err = |op| move |source| TransportError::Vsock { port, op, source };
        let fd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(err("socket"))?;
        let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
        socket::bind(fd.as_raw_fd(), &addr).map_err(err("bind"))?;
        socket::listen(&fd, socket::Backlog::new(64).map_err(err("listen"))?)
            .map_err(err("listen"))?;
        let fd = register(fd).map_err(|e| TransportError::Vsock {
            port,
            op: "register",
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        Ok(Self { port, fd })
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    pub async fn accept(&self) -> io::Result<FdStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|fd| {
                socket::accept4(
                    fd.get_ref().as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            match accepted {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    return FdStream::new(fd);
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// FdStream moves bytes both ways over a nonblocking socketpair and reports EOF.
    #[tokio::test]
    async fn fd_stream_reads_writes_and_sees_eof() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut a = FdStream::new(a).unwrap();
        let mut b = FdStream::new(b).unwrap();
        let big = vec![7u8; 1 << 20];
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.unwrap();
            drop(a);
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert!(got.iter().all(|&x| x == 7));
    }

    /// The listener binds and listens for any CID (the host kernel has AF_VSOCK; no VM is
    /// needed to bind). A second bind of the same port fails with the port in the error.
    #[tokio::test]
    async fn vsock_listener_binds_any_cid() {
        let port = 40_000 + std::process::id() % 20_000;
        let listener = VsockListener::bind(port).unwrap();
        assert_eq!(listener.port(), port);
        let err = VsockListener::bind(port).unwrap_err().to_string();
        assert!(
            err.contains(&port.to_string()) && err.contains("bind"),
            "{err}"
        );
    }

    /// Garbage (a dead session's tail) before the preface is skipped; the preface and what
    /// follows it reach the new session intact, even when split across reads.
    /// A reopened port keeps what was already read and what was still queued, and the
    /// session goes on reading on the new descriptor (a FIFO stands in for the port: it
    /// can be closed and opened again by path, and keeps its data while a writer holds it).
    #[tokio::test]
    async fn a_reopened_session_keeps_every_byte() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("port");
        nix::unistd::mkfifo(&node, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let port = open_serial_port(&node).unwrap();
        let mut host = std::fs::OpenOptions::new().write(true).open(&node).unwrap();
        host.write_all(H2_PREFACE).unwrap();
        host.write_all(b"SETTINGS").unwrap();
        let mut port = port;
        let session = port.next_h2_session().await.unwrap();
        host.write_all(b"+queued").unwrap();
        let (_port, mut session) = port.reopen_with(session, &node).unwrap();
        host.write_all(b"+after").unwrap();
        let mut got = vec![0u8; H2_PREFACE.len() + b"SETTINGS+queued+after".len()];
        session.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&got[H2_PREFACE.len()..], b"SETTINGS+queued+after");
    }

    #[tokio::test]
    async fn a_new_session_starts_at_the_next_preface() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut host = FdStream::new(a).unwrap();
        let mut port = FdStream::new(b).unwrap();
        let writer = tokio::spawn(async move {
            host.write_all(b"\x00\x00\x04old-frame-bytesPRI * HTTP/2")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            host.write_all(b".0\r\n\r\nSM\r\n\r\nSETTINGS")
                .await
                .unwrap();
            host
        });
        let mut session = port.next_h2_session().await.unwrap();
        let _host = writer.await.unwrap();
        let mut got = vec![0u8; H2_PREFACE.len() + 8];
        session.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&got[H2_PREFACE.len()..], b"SETTINGS");
    }
}
