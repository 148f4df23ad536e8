//! Host-initiated vsock connections through Firecracker's Unix socket.
//!
//! Firecracker binds `uds_path` (see `PUT /vsock`); a host process connects to it, writes
//! `CONNECT <port>\n`, and Firecracker answers `OK <host port>\n` once the guest accepted on that
//! vsock port. After that line the stream is the guest connection. If nothing listens in the
//! guest Firecracker closes the socket without a reply, which is how a guest that is still
//! booting looks: callers retry (the relay does, through the health check).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The guest's vsock port for hearth-guest (the same number is in the kernel command line,
/// `hearth.transport=vsock:1024`).
pub use crate::backend::vm::GUEST_VSOCK_PORT;

/// How long the handshake may take: Firecracker answers as soon as the guest accepts.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest acceptable reply line; `OK 4294967295\n` is 14 bytes.
const MAX_REPLY: usize = 32;

/// Opens guest connections on one vsock port through Firecracker's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConnector {
    /// Firecracker's `uds_path`, as seen from the host.
    pub uds: PathBuf,
    pub port: u32,
}

impl VsockConnector {
    pub fn new(uds: impl Into<PathBuf>, port: u32) -> Self {
        Self {
            uds: uds.into(),
            port,
        }
    }

    /// Connects and performs the `CONNECT`/`OK` handshake; the returned stream talks to the
    /// guest. Errors name the socket and say what went wrong: refused (connection closed
    /// without a reply), a malformed reply, or the timeout.
    pub async fn connect(&self) -> io::Result<UnixStream> {
        self.connect_with_timeout(HANDSHAKE_TIMEOUT).await
    }

    /// [`Self::connect`] with an explicit handshake timeout.
    pub async fn connect_with_timeout(&self, timeout: Duration) -> io::Result<UnixStream> {
        let mut stream = UnixStream::connect(&self.uds)
            .await
            .map_err(|err| self.error(err.kind(), format!("connect: {err}")))?;
        match tokio::time::timeout(timeout, self.handshake(&mut stream)).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(self.error(
                io::ErrorKind::TimedOut,
                format!("no reply to CONNECT within {timeout:?}"),
            )),
        }
    }

    async fn handshake(&self, stream: &mut UnixStream) -> io::Result<()> {
        stream
            .write_all(format!("CONNECT {}\n", self.port).as_bytes())
            .await
            .map_err(|err| self.error(err.kind(), format!("send CONNECT: {err}")))?;
        // Byte by byte: anything after the newline already belongs to the guest.
        let mut line = Vec::with_capacity(MAX_REPLY);
        loop {
            let byte = match stream.read_u8().await {
                Ok(byte) => byte,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(self.error(
                        io::ErrorKind::ConnectionRefused,
                        format!(
                            "connection closed after CONNECT (nothing listening on guest port {}?){}",
                            self.port,
                            partial(&line)
                        ),
                    ));
                }
                Err(err) => return Err(self.error(err.kind(), format!("read reply: {err}"))),
            };
            if byte == b'\n' {
                break;
            }
            line.push(byte);
            if line.len() > MAX_REPLY {
                return Err(self.malformed(&line));
            }
        }
        parse_ok(&line).map_err(|()| self.malformed(&line))
    }

    fn malformed(&self, line: &[u8]) -> io::Error {
        self.error(
            io::ErrorKind::InvalidData,
            format!(
                "malformed reply {:?}, expected \"OK <port>\"",
                String::from_utf8_lossy(line)
            ),
        )
    }

    fn error(&self, kind: io::ErrorKind, what: String) -> io::Error {
        io::Error::new(
            kind,
            format!("vsock {} port {}: {what}", self.uds.display(), self.port),
        )
    }
}

fn partial(line: &[u8]) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!(" after {:?}", String::from_utf8_lossy(line))
    }
}

/// Accepts exactly `OK <u32>`.
fn parse_ok(line: &[u8]) -> Result<(), ()> {
    let text = std::str::from_utf8(line).map_err(drop)?;
    let port = text.strip_prefix("OK ").ok_or(())?;
    port.parse::<u32>().map(drop).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    /// A peer that reads the CONNECT line like Firecracker, sends `reply`, then echoes.
    async fn fake_firecracker(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            write.write_all(reply).await.unwrap();
            if !reply.starts_with(b"OK") {
                return; // Firecracker closes the connection
            }
            let mut buf = [0u8; 64];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => write.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        (tmp, path)
    }

    #[tokio::test]
    async fn ok_reply_yields_a_stream_to_the_guest() {
        // The reply and the guest's first bytes may arrive together: nothing may be lost.
        let (_tmp, path) = fake_firecracker(b"OK 1073741824\n").await;
        let mut stream = VsockConnector::new(&path, GUEST_VSOCK_PORT)
            .connect()
            .await
            .unwrap();
        stream.write_all(b"GET /v1/health").await.unwrap();
        let mut echoed = [0u8; 14];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"GET /v1/health");
    }

    #[tokio::test]
    async fn closed_without_reply_is_refused() {
        let (_tmp, path) = fake_firecracker(b"").await;
        let err = VsockConnector::new(&path, GUEST_VSOCK_PORT)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains("vsock.sock"), "{err}");
    }

    #[tokio::test]
    async fn malformed_replies_are_invalid_data() {
        for reply in [
            &b"NOPE\n"[..],
            b"OK\n",
            b"OK x\n",
            b"OK 99999999999\n",
            b"OK 1 2\n",
        ] {
            let reply: &'static [u8] = reply;
            let (_tmp, path) = fake_firecracker(reply).await;
            let err = VsockConnector::new(&path, GUEST_VSOCK_PORT)
                .connect()
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{reply:?}: {err}");
        }
        let (_tmp, path) = fake_firecracker(&[b'O'; 100]).await;
        let err = VsockConnector::new(&path, GUEST_VSOCK_PORT)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn silence_times_out_and_a_missing_socket_fails_to_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vsock.sock");
        let _listener = UnixListener::bind(&path).unwrap(); // accepts in the backlog, never replies
        let err = VsockConnector::new(&path, GUEST_VSOCK_PORT)
            .connect_with_timeout(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");

        let missing = tmp.path().join("gone.sock");
        let err = VsockConnector::new(&missing, GUEST_VSOCK_PORT)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
