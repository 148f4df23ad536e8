//! The one place that calls `waitpid`: a SIGCHLD-driven reaper and the table of running execs.
//!
//! As PID 1 (or a child subreaper) the daemon inherits every orphan in the sandbox, so it must
//! reap with `waitpid(-1)`. That steals statuses from anyone else waiting on a specific pid,
//! which is why `tokio::process` is not used and why every exec registers its pid here and gets
//! its status through a oneshot channel instead. Statuses of unregistered pids (orphans) are
//! discarded.
//!
//! Spawning happens under the table lock ([`Children::spawn_with`]) and the reaper takes the same
//! lock before calling `waitpid`. That closes two races: a child that exits before its pid is
//! registered, and `std::process::Command::spawn`, which itself waits on a child whose `exec`
//! failed and would panic if the reaper had already collected it.

use std::collections::HashMap;
use std::io;
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Exited(i32),
    Signaled(i32),
}

/// Errors of the reaper itself.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("install the SIGCHLD handler: {0}")]
    Signal(#[source] io::Error),
}

type Waiters = HashMap<i32, oneshot::Sender<Reaped>>;

/// Running exec'd children, keyed by pid. Each is the leader of its own process group.
#[derive(Debug, Default)]
pub struct Children {
    waiters: Mutex<Waiters>,
}

impl Children {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding the lock leaves the map itself consistent, so keep going.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `spawn` under the table lock and registers the child it returns.
    pub fn spawn_with<E>(
        &self,
        spawn: impl FnOnce() -> Result<Child, E>,
    ) -> Result<(Child, oneshot::Receiver<Reaped>), E> {
        let mut waiters = self.lock();
        let child = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid_i32(child.id()), tx);
        Ok((child, rx))
    }

    /// Number of registered children not yet reaped.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    /// Sends `sig` to the process group of `pid` if it is a registered child still running
    /// (checked under the table lock, so a reaped pid the kernel reused is never signalled).
    pub fn signal_one(&self, pid: i32, sig: Signal) -> bool {
        let waiters = self.lock();
        waiters.contains_key(&pid) && killpg(Pid::from_raw(pid), sig).is_ok()
    }

    /// Sends `sig` to the process group of every registered child.
    pub fn signal_all(&self, sig: Signal) {
        for &pid in self.lock().keys() {
            // ESRCH: the group is already gone; nothing else can fail for our own children.
            let _ = killpg(Pid::from_raw(pid), sig);
        }
    }

    /// Collects every exited child and hands each status to its waiter.
    pub fn reap(&self) -> usize {
        let mut waiters = self.lock();
        let mut reaped = 0;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Reaped::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => (pid, Reaped::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                // Stops and continues are not requested (no WUNTRACED); nothing to hand out.
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    break;
                }
            };
            reaped += 1;
            dispatch(&mut waiters, pid.as_raw(), status);
        }
        reaped
    }

    /// Reaps on every SIGCHLD until the runtime stops. Call before spawning anything so no
    /// SIGCHLD can be missed.
    pub fn start_reaper(self: &Arc<Self>) -> Result<(), ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let children = Arc::clone(self);
        tokio::spawn(async move {
            // Orphans may already be waiting if we were started late (e.g. re-exec).
            children.reap();
            while sigchld.recv().await.is_some() {
                children.reap();
            }
        });
        Ok(())
    }
}

/// Hands `status` to the waiter of `pid`; returns false for orphans nobody registered.
fn dispatch(waiters: &mut Waiters, pid: i32, status: Reaped) -> bool {
    match waiters.remove(&pid) {
        // The receiver may be gone if the request was cancelled; the status is then moot.
        Some(tx) => {
            let _ = tx.send(status);
            true
        }
        None => {
            tracing::debug!(pid, ?status, "reaped orphan");
            false
        }
    }
}

/// Pids fit in i32 on Linux (`pid_max` is at most 2^22).
pub fn pid_i32(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn dispatch_routes_status_to_its_waiter_and_drops_orphans() {
        let mut waiters = Waiters::new();
        let (tx, mut rx) = oneshot::channel();
        waiters.insert(42, tx);
        assert!(!dispatch(&mut waiters, 7, Reaped::Exited(0)));
        assert!(
            rx.try_recv().is_err(),
            "an orphan's status must not reach pid 42"
        );
        assert!(dispatch(&mut waiters, 42, Reaped::Signaled(9)));
        assert_eq!(rx.try_recv().unwrap(), Reaped::Signaled(9));
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn reaper_delivers_real_exit_statuses() {
        let children = Children::new();
        children.start_reaper().unwrap();
        let (_c1, exit3) = children
            .spawn_with(|| Command::new("sh").args(["-c", "exit 3"]).spawn())
            .unwrap();
        let (_c2, killed) = children
            .spawn_with(|| Command::new("sh").args(["-c", "kill -9 $$"]).spawn())
            .unwrap();
        assert_eq!(exit3.await.unwrap(), Reaped::Exited(3));
        assert_eq!(killed.await.unwrap(), Reaped::Signaled(9));
        assert_eq!(children.running(), 0);

        // After a failed exec, std (fork path) or glibc (posix_spawn) waits on the child itself;
        // under the table lock the reaper cannot steal that status (std would panic if it did).
        for _ in 0..20 {
            let err = children
                .spawn_with(|| {
                    crate::spawn::group_leader_command("/nonexistent/hearth-test").spawn()
                })
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
            tokio::task::yield_now().await;
        }
        assert_eq!(children.running(), 0);
    }
}
