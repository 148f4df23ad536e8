//! The supervisor's relay duty for microVM sandboxes: every caller keeps talking HTTP/1.1 to the
//! sandbox's guest socket, and this process forwards each connection into the VM (see
//! [`hearth_sandbox::backend::vm::relay`]). It must live as long as the VM, like the seccomp
//! listener, so it runs in the per-sandbox supervisor.

use std::sync::Arc;

use hearth_sandbox::backend::firecracker::vsock::VsockConnector;
use hearth_sandbox::backend::qemu::VhostVsockConnector;
use hearth_sandbox::backend::vm::relay::{self, GuestConnector, RelayError, Upstream};
use tokio::sync::watch;

/// Where the guest answers, as the backend says ([`SandboxBackend::guest_channel`]) and as
/// handed to the supervisor on its command line.
///
/// [`SandboxBackend::guest_channel`]: hearth_sandbox::backend::SandboxBackend::guest_channel
pub use hearth_sandbox::backend::GuestChannel as RelayDuty;

/// The relay's upstream for a guest channel.
fn upstream(duty: &RelayDuty) -> Upstream {
    match duty {
        RelayDuty::Http2Mux { socket } => Upstream::Http2Mux {
            socket: socket.clone(),
        },
        RelayDuty::VhostVsock { cid, port } => {
            Upstream::PerConnection(Arc::new(VhostVsockConnector {
                cid: *cid,
                port: *port,
            }))
        }
        RelayDuty::FirecrackerVsock { uds, port } => {
            Upstream::PerConnection(Arc::new(FirecrackerConnector(VsockConnector {
                uds: uds.clone(),
                port: *port,
            })))
        }
    }
}

/// Firecracker's handshake as a relay connector.
#[derive(Debug)]
struct FirecrackerConnector(VsockConnector);

impl GuestConnector for FirecrackerConnector {
    fn connect(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<tokio::net::UnixStream>> + Send + '_>,
    > {
        Box::pin(async move { self.0.connect().await.map_err(std::io::Error::other) })
    }
}

/// A running relay; dropping the stop sender ends it.
#[derive(Debug)]
pub struct RelayTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
}

impl RelayTask {
    /// Binds the guest socket now (so the parent's health wait finds it) and serves in the
    /// background.
    pub fn start(duty: &RelayDuty, guest_socket: &std::path::Path) -> Result<Self, RelayError> {
        let listener = relay::bind(guest_socket)?;
        let (stop, mut stopped) = watch::channel(false);
        let upstream = upstream(duty);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            relay::serve(listener, upstream, shutdown).await
        });
        Ok(Self { stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(%err, "the guest relay failed"),
            Err(err) => tracing::error!(%err, "the guest relay task panicked"),
        }
    }
}
