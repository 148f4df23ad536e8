//! The host side of QEMU's vhost-vsock channel: a kernel AF_VSOCK connection to the guest's
//! CID and port, one per relayed client (hearth-guest serves HTTP/1.1 there, as on its Unix
//! socket).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use tokio::net::UnixStream;

use crate::backend::vm::relay::GuestConnector;

/// Connects to `port` on the guest with context id `cid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhostVsockConnector {
    pub cid: u32,
    pub port: u32,
}

impl GuestConnector for VhostVsockConnector {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<UnixStream>> + Send + '_>> {
        let (cid, port) = (self.cid, self.port);
        Box::pin(async move {
            // connect(2) on vsock blocks until the guest answers or the kernel's timeout.
            let stream = tokio::task::spawn_blocking(move || connect_blocking(cid, port))
                .await
                .map_err(io::Error::other)??;
            UnixStream::from_std(stream)
        })
    }
}

/// A connected AF_VSOCK stream, in the `UnixStream` type the relay's connector trait returns.
/// Both are stream sockets driven by read, write and shutdown, which is all the relay does with
/// it (it never asks for addresses or credentials).
fn connect_blocking(cid: u32, port: u32) -> io::Result<std::os::unix::net::UnixStream> {
    let with_context = |err: nix::Error| {
        io::Error::new(
            io::Error::from(err).kind(),
            format!("vsock connect to cid {cid} port {port}: {err}"),
        )
    };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(with_context)?;
    socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)).map_err(with_context)?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absent_guest_is_an_error_naming_cid_and_port() {
        let connector = VhostVsockConnector {
            cid: 4_000_000,
            port: 1024,
        };
        let err = connector.connect().await.unwrap_err();
        assert!(err.to_string().contains("cid 4000000 port 1024"), "{err}");
    }
}
