//! Killing a process and waiting for it without races, through a pidfd.
//!
//! A pid read from a runtime's state file could be reused by the time we signal it; a pidfd
//! refers to exactly one process, and polling it tells when that process has exited, without
//! being its parent and without sleeping in fixed steps.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Errors of pidfd operations; `pid` says which process.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    #[error("cannot open a pidfd for process {pid}: {source}")]
    Open { pid: i32, source: io::Error },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: io::Error },
    #[error("cannot wait for process {pid}: {source}")]
    Poll { pid: i32, source: nix::Error },
    #[error("process {pid} still runs {waited:?} after SIGKILL")]
    StillRunning { pid: i32, waited: Duration },
}

/// An open pidfd: names exactly one process for as long as it is held, even after that
/// process exits and its pid is reused.
#[derive(Debug)]
pub struct Pidfd {
    pid: i32,
    fd: OwnedFd,
}

impl Pidfd {
    /// Opens a pidfd for `pid`; `None` when no such process exists.
    pub fn open(pid: i32) -> Result<Option<Self>, PidfdError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // shared.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(PidfdError::Open { pid, source: err }),
            };
        }
        let fd = i32::try_from(raw).map_err(|_| PidfdError::Open {
            pid,
            source: io::Error::from_raw_os_error(libc::EBADF),
        })?;
        // SAFETY: the syscall just returned this fd, so it is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(Self { pid, fd }))
    }

    /// The pid it was opened for.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal`; a process that has already exited is not an error.
    pub fn signal(&self, signal: i32) -> Result<(), PidfdError> {
        // SAFETY: pidfd_send_signal reads only its integer arguments; the info pointer is NULL,
        // which the kernel treats as a plain kill(2)-style signal.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(PidfdError::Signal {
                    pid: self.pid,
                    source: err,
                });
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` (capped at about 65 s) for the process to exit; true if it has.
    pub fn wait(&self, timeout: Duration) -> Result<bool, PidfdError> {
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(source) => Err(PidfdError::Poll {
                pid: self.pid,
                source,
            }),
        }
    }
}

/// Sends SIGKILL to `pid` and waits until it has exited. A process that is already gone is
/// not an error.
pub fn kill_and_wait(pid: i32, timeout: Duration) -> Result<(), PidfdError> {
    let Some(pidfd) = Pidfd::open(pid)? else {
        return Ok(());
    };
    pidfd.signal(libc::SIGKILL)?;
    if pidfd.wait(timeout)? {
        Ok(())
    } else {
        Err(PidfdError::StillRunning {
            pid,
            waited: timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn kills_and_waits_for_a_process() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        kill_and_wait(pid, Duration::from_secs(5)).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_gone_process_is_fine() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        // Reaped: the pid no longer exists (barring reuse within microseconds).
        kill_and_wait(pid, Duration::from_secs(1)).unwrap();
    }
}
