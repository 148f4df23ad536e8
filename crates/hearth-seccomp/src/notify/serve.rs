//! The loop that answers every notification with EPERM and records it.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::sys::{self, Notification, NotifyFd};
use super::NotifyError;
use crate::audit::{AuditAction, AuditEntry, AuditSource, SharedAuditLog};

/// How often the loop looks at `stop` while no notification arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long comm/exe read for a pid are reused. Reading /proc halves the throughput of a flood
/// from one process; the price is that an execve in the last 100 ms may be shown with the old
/// names (they are hints "when known" anyway: comm is settable by the process itself).
const PROC_CACHE_TTL: Duration = Duration::from_millis(100);

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// POLLHUP: every process under the filter has exited.
    FilterGone,
    /// The caller set `stop`.
    Stopped,
}

/// What one [`serve`] run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    /// Notifications received (and recorded).
    pub handled: u64,
    /// Of those, how many targets were gone before the answer (killed mid-call).
    pub target_gone: u64,
    /// Why the loop ended.
    pub end: ServeEnd,
}

/// Answers notifications on `fd` with EPERM, recording each in `audit`, until every process under
/// the filter has exited or `stop` is set (checked at least every [`POLL_INTERVAL`]).
pub fn serve(
    fd: &NotifyFd,
    audit: &SharedAuditLog,
    stop: &AtomicBool,
) -> Result<ServeSummary, NotifyError> {
    serve_as(fd, audit, stop, AuditSource::OciNotify)
}

/// [`serve`], recording the entries as coming from `source` (the OCI runtime's fd, or one
/// `hearth-guest` took from its own child).
pub fn serve_as(
    fd: &NotifyFd,
    audit: &SharedAuditLog,
    stop: &AtomicBool,
    source: AuditSource,
) -> Result<ServeSummary, NotifyError> {
    let mut summary = ServeSummary {
        handled: 0,
        target_gone: 0,
        end: ServeEnd::Stopped,
    };
    let mut cache = ProcCache::default();
    // POLLNVAL can't happen with an owned fd, but spinning on it would burn a core.
    let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
    while !stop.load(Ordering::Relaxed) {
        let revents = match wait(fd.as_fd())? {
            Some(revents) => revents,
            None => continue,
        };
        // Pending notifications are drained before a hang-up is believed.
        if revents.contains(PollFlags::POLLIN) {
            let Some(notif) = receive(fd.as_fd())? else {
                continue;
            };
            summary.handled += 1;
            if !answer(fd.as_fd(), &notif, audit, source, &mut cache)? {
                summary.target_gone += 1;
            }
        } else if revents.intersects(gone) {
            summary.end = ServeEnd::FilterGone;
            return Ok(summary);
        }
    }
    Ok(summary)
}

/// Runs [`serve`] on its own named thread; the supervisor starts one per notification fd.
pub fn spawn_server(
    name: String,
    fd: NotifyFd,
    audit: SharedAuditLog,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<ServeSummary, NotifyError>>, NotifyError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || serve(&fd, &audit, &stop))
        .map_err(NotifyError::Spawn)
}

/// poll(2) for one interval; `None` on timeout or EINTR.
fn wait(fd: BorrowedFd<'_>) -> Result<Option<PollFlags>, NotifyError> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let interval = PollTimeout::try_from(POLL_INTERVAL).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, interval) {
        Ok(0) | Err(Errno::EINTR) => Ok(None),
        Ok(_) => Ok(fds[0].revents()),
        Err(errno) => Err(NotifyError::Poll(errno)),
    }
}

/// One RECV; `None` when the notification vanished between poll and RECV (target killed).
fn receive(fd: BorrowedFd<'_>) -> Result<Option<Notification>, NotifyError> {
    match sys::recv(fd) {
        Ok(notif) => Ok(Some(notif)),
        Err(Errno::ENOENT | Errno::EINTR) => Ok(None),
        Err(errno) => Err(NotifyError::Recv(errno)),
    }
}

/// Records the call and fails it with EPERM. Returns false if the target was already gone.
fn answer(
    fd: BorrowedFd<'_>,
    notif: &Notification,
    audit: &SharedAuditLog,
    source: AuditSource,
    cache: &mut ProcCache,
) -> Result<bool, NotifyError> {
    let mut entry = AuditEntry::new(
        notif.data.arch,
        i64::from(notif.data.nr),
        notif.data.args,
        AuditAction::DeniedEperm,
        source,
    );
    entry.pid = Some(notif.pid);
    if let Some((comm, exe)) = cache.get(notif.pid) {
        entry.comm = comm;
        entry.exe = exe;
    } else {
        let (comm, exe) = read_proc(notif.pid);
        // /proc was read after RECV; if the notification is no longer valid the pid may already
        // belong to another process, so the names are dropped rather than misattributed.
        let still_valid = sys::id_valid(fd, notif.id).map_err(|source| NotifyError::IdValid {
            id: notif.id,
            source,
        })?;
        if still_valid {
            cache.put(notif.pid, &comm, &exe);
            entry.comm = comm;
            entry.exe = exe;
        }
    }
    audit.record(entry);
    match sys::send_error(fd, notif.id, libc::EPERM) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(source) => Err(NotifyError::Send {
            id: notif.id,
            source,
        }),
    }
}

/// The names of the last pid seen, while fresh.
#[derive(Debug, Default)]
struct ProcCache {
    last: Option<(u32, Instant, Option<String>, Option<String>)>,
}

impl ProcCache {
    fn get(&self, pid: u32) -> Option<(Option<String>, Option<String>)> {
        match &self.last {
            Some((p, at, comm, exe)) if *p == pid && at.elapsed() < PROC_CACHE_TTL => {
                Some((comm.clone(), exe.clone()))
            }
            _ => None,
        }
    }

    fn put(&mut self, pid: u32, comm: &Option<String>, exe: &Option<String>) {
        self.last = Some((pid, Instant::now(), comm.clone(), exe.clone()));
    }
}

/// comm and exe of `pid`, each `None` if it can't be read (exited, or hidden from us).
fn read_proc(pid: u32) -> (Option<String>, Option<String>) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end_matches('\n').to_owned());
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    (comm, exe)
}
