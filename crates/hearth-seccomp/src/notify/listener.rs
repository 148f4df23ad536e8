//! The `listenerPath` socket: bind it, accept one runtime connection, take the fd and the state.

use std::fs;
use std::io::{IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::state::{ContainerProcessState, SECCOMP_FD_NAME};
use super::sys::NotifyFd;
use super::NotifyError;

/// Descriptors accepted per message; runtimes send one (the seccomp fd).
const MAX_FDS: usize = 8;
/// runc's state is a few hundred bytes; annotations could make it larger, but not this large.
const MAX_STATE_BYTES: usize = 1 << 20;
const FIRST_READ_BYTES: usize = 64 * 1024;

/// What a runtime hands over: the notification fd and the container it belongs to.
#[derive(Debug)]
pub struct Accepted {
    /// The seccomp notification fd.
    pub fd: NotifyFd,
    /// The state JSON that came with it.
    pub state: ContainerProcessState,
}

/// A bound `listenerPath` socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct NotifyListener {
    path: PathBuf,
    socket: UnixListener,
}

impl NotifyListener {
    /// Binds `path` with mode 0600. Fails if anything exists there: a stale socket would mean
    /// two sandboxes share a path, which must not be papered over by unlinking it.
    ///
    /// bind(2) creates the file with the umask's mode before the chmod, so the caller puts it in
    /// a directory only hearth can enter (the per-sandbox 0700 directory).
    pub fn bind(path: &Path) -> Result<Self, NotifyError> {
        let socket = UnixListener::bind(path).map_err(|source| NotifyError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let listener = Self {
            path: path.to_owned(),
            socket,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            NotifyError::Chmod {
                path: path.to_owned(),
                source,
            }
        })?;
        // Non-blocking so that a connection that vanishes between poll and accept can't hang us.
        listener
            .socket
            .set_nonblocking(true)
            .map_err(|source| NotifyError::Nonblocking {
                path: path.to_owned(),
                source,
            })?;
        Ok(listener)
    }

    /// The socket's path, to put in `linux.seccomp.listenerPath`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for a runtime to connect, then receives its fd and state.
    pub fn accept_one(&self, timeout: Duration) -> Result<Accepted, NotifyError> {
        let deadline = Instant::now() + timeout;
        let stream = self.accept_until(deadline, timeout)?;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(remaining))
            .map_err(|source| NotifyError::ReadTimeout {
                path: self.path.clone(),
                source,
            })?;
        self.receive(stream)
    }

    fn accept_until(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<UnixStream, NotifyError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotifyError::AcceptTimeout {
                    path: self.path.clone(),
                    timeout,
                });
            }
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(source) => {
                    return Err(NotifyError::AcceptPoll {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
            match self.socket.accept() {
                // The accepted socket is blocking (accept4 without SOCK_NONBLOCK); good, the
                // read timeout bounds it.
                Ok((stream, _)) => return Ok(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(source) => {
                    return Err(NotifyError::Accept {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// One recvmsg for the fds and the start of the JSON, then plain reads until the JSON is
    /// complete: on a stream socket the payload may arrive in pieces, the fds only with the first.
    fn receive(&self, mut stream: UnixStream) -> Result<Accepted, NotifyError> {
        let mut buf = vec![0u8; FIRST_READ_BYTES];
        let (len, fds) = self.recv_fds(&stream, &mut buf)?;
        buf.truncate(len);
        let state = loop {
            match serde_json::from_slice::<ContainerProcessState>(&buf) {
                Ok(state) => break state,
                Err(e) if e.is_eof() => self.read_more(&mut stream, &mut buf, e)?,
                Err(source) => {
                    return Err(NotifyError::StateJson {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        };
        let fd = self.pick_seccomp_fd(&state, fds)?;
        Ok(Accepted { fd, state })
    }

    fn recv_fds(
        &self,
        stream: &UnixStream,
        buf: &mut [u8],
    ) -> Result<(usize, Vec<OwnedFd>), NotifyError> {
        let path = || self.path.clone();
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|source| NotifyError::RecvMsg {
            path: path(),
            source,
        })?;
        let mut fds = Vec::new();
        // cmsgs() refuses (ENOBUFS) when MSG_CTRUNC is set; the kernel closed the fds that didn't
        // fit, and the ones that did are not reachable, so report truncation.
        let cmsgs = msg
            .cmsgs()
            .map_err(|_| NotifyError::ControlTruncated { path: path() })?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
                for raw in raw_fds {
                    // SAFETY: SCM_RIGHTS just installed `raw` in this process's fd table for
                    // this message; nothing else knows it, so this OwnedFd is its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        Ok((msg.bytes, fds))
    }

    fn read_more(
        &self,
        stream: &mut UnixStream,
        buf: &mut Vec<u8>,
        eof: serde_json::Error,
    ) -> Result<(), NotifyError> {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .map_err(|source| NotifyError::ReadState {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            // The runtime closed the connection mid-JSON.
            return Err(NotifyError::StateJson {
                path: self.path.clone(),
                source: eof,
            });
        }
        if buf.len() + n > MAX_STATE_BYTES {
            return Err(NotifyError::StateTooLarge {
                path: self.path.clone(),
                limit: MAX_STATE_BYTES,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn pick_seccomp_fd(
        &self,
        state: &ContainerProcessState,
        mut fds: Vec<OwnedFd>,
    ) -> Result<NotifyFd, NotifyError> {
        if state.fds.len() != fds.len() {
            return Err(NotifyError::FdCountMismatch {
                path: self.path.clone(),
                named: state.fds.clone(),
                received: fds.len(),
            });
        }
        let index = state
            .fds
            .iter()
            .position(|name| name == SECCOMP_FD_NAME)
            .ok_or_else(|| NotifyError::NoSeccompFd {
                path: self.path.clone(),
                named: state.fds.clone(),
            })?;
        // The others (none today) are closed when `fds` drops.
        Ok(NotifyFd::from_owned(fds.swap_remove(index)))
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        // Best effort: the directory is removed with the sandbox anyway.
        let _ = fs::remove_file(&self.path);
    }
}
