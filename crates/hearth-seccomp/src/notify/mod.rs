//! Receiving seccomp user notifications from an OCI runtime (`listenerPath`).
//!
//! With `SCMP_ACT_NOTIFY` rules and `linux.seccomp.listenerPath` in the spec, the runtime (runc
//! 1.1+, crun) connects to that Unix socket after creating the container and sends the filter's
//! notification fd with SCM_RIGHTS, the container process state JSON as payload. Until someone
//! answers, every notified call blocks; if the fd is dropped unanswered the calls fail with ENOSYS.
//!
//! [`NotifyListener`] binds the socket and accepts the fd; [`serve`] answers each notification with
//! EPERM and records it in the sandbox's [`crate::audit::SharedAuditLog`]. Everything is
//! synchronous: one dedicated thread per fd is simpler and more robust than an async reactor for
//! a loop that is mostly blocked in poll(2).

mod listener;
mod serve;
mod state;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

pub use listener::{Accepted, NotifyListener};
pub use serve::{serve, serve_as, spawn_server, ServeEnd, ServeSummary, POLL_INTERVAL};
pub use state::{ContainerProcessState, ContainerState, SECCOMP_FD_NAME};
pub use sys::NotifyFd;

/// Errors of the notify listener and server.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Binding the listener socket failed (it exists already, or its directory is missing).
    #[error("binding seccomp listener socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Restricting the socket to its owner failed.
    #[error("setting mode 0600 on seccomp listener socket {path}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Making the listener non-blocking (for the accept timeout) failed.
    #[error("making seccomp listener socket {path} non-blocking")]
    Nonblocking {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the runtime to connect failed.
    #[error("waiting for a connection on seccomp listener socket {path}")]
    AcceptPoll {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// The runtime did not connect in time: the sandbox must not run unaudited.
    #[error("no runtime connected to seccomp listener socket {path} within {timeout:?}")]
    AcceptTimeout { path: PathBuf, timeout: Duration },
    /// accept(2) failed.
    #[error("accepting on seccomp listener socket {path}")]
    Accept {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Setting the read timeout on the accepted connection failed.
    #[error("setting a read timeout on a connection to {path}")]
    ReadTimeout {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// recvmsg(2) of the fd and state failed (or timed out: EAGAIN).
    #[error("receiving the seccomp fd on {path}")]
    RecvMsg {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// The control message was cut short, so the kernel dropped descriptors.
    #[error("the runtime's control message on {path} was truncated")]
    ControlTruncated { path: PathBuf },
    /// Reading the rest of the state JSON failed.
    #[error("reading the container state on {path}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state JSON did not fit the bound, which no real runtime reaches.
    #[error("the container state on {path} exceeds {limit} bytes")]
    StateTooLarge { path: PathBuf, limit: usize },
    /// The state was not the runtime-spec `ContainerProcessState`.
    #[error("parsing the container state received on {path}")]
    StateJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The state's `fds` names do not match the descriptors received.
    #[error("{path}: state names fds {named:?} but {received} descriptors arrived")]
    FdCountMismatch {
        path: PathBuf,
        named: Vec<String>,
        received: usize,
    },
    /// The state names no `seccompFd`.
    #[error("{path}: no \"seccompFd\" among the fds {named:?}")]
    NoSeccompFd { path: PathBuf, named: Vec<String> },
    /// poll(2) on the notification fd failed.
    #[error("polling the seccomp notification fd")]
    Poll(#[source] Errno),
    /// SECCOMP_IOCTL_NOTIF_RECV failed.
    #[error("receiving a seccomp notification")]
    Recv(#[source] Errno),
    /// SECCOMP_IOCTL_NOTIF_SEND failed for a reason other than the target being gone.
    #[error("answering seccomp notification {id}")]
    Send {
        id: u64,
        #[source]
        source: Errno,
    },
    /// SECCOMP_IOCTL_NOTIF_ID_VALID failed for a reason other than the target being gone.
    #[error("checking seccomp notification {id}")]
    IdValid {
        id: u64,
        #[source]
        source: Errno,
    },
    /// The server thread could not be started.
    #[error("spawning the seccomp notification thread")]
    Spawn(#[source] std::io::Error),
}
