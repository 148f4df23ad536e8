//! `GET /v1/audit?since=SEQ[&limit=N]`: the system calls this guest refused on behalf of the
//! host's policy, as an `AuditPage` JSON.
//!
//! Each exec whose filters audit calls hands its seccomp listener to the guest (see
//! `crate::seccomp::ListenerHandoff`); one thread per listener answers every notification with
//! EPERM and records it here, until the last process under that filter has exited. The log is
//! bounded like the host's; the host's supervisor reads it every flush, so the ring only needs to
//! cover one flush interval. Entries the ring dropped before the host read them are reported by
//! the page (`AuditPage::missed_since`).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hearth_proto::ErrorKind;
use hearth_seccomp::audit::{
    AuditConfig, AuditError, AuditPage, AuditSource, SeccompAuditLog, SharedAuditLog,
};
use hearth_seccomp::notify::{serve_as, NotifyFd};
use http::{Response, StatusCode};

use crate::http::{json, query_param, ApiError, RespBody};

/// Entries kept in the guest: several seconds of a flood between two host reads.
const CAPACITY: usize = 8192;
/// The most entries one page carries (the host asks again until caught up).
pub const MAX_PAGE: usize = 1024;

fn config() -> AuditConfig {
    AuditConfig {
        capacity: CAPACITY,
        ..AuditConfig::default()
    }
}

/// The guest's log of refused calls and the stop flag of its listener threads.
#[derive(Debug, Clone)]
pub struct GuestAudit {
    log: SharedAuditLog,
    stop: Arc<AtomicBool>,
}

impl GuestAudit {
    pub fn new() -> Result<Self, AuditError> {
        Ok(Self {
            log: SharedAuditLog::new(config())?,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Empties the log: a VM restored from a snapshot is a new sandbox, and what the log holds
    /// was refused in the sandbox it was saved from. (The host reads the log only once the new
    /// sandbox is running, which is after this.) Listener threads keep recording into it.
    pub fn restart(&self) -> Result<(), AuditError> {
        *self.log.lock() = SeccompAuditLog::new(config())?;
        Ok(())
    }

    /// Answers and records the notifications of one exec's filter on a thread of its own.
    pub fn serve(&self, listener: OwnedFd, pid: u32) {
        let (log, stop) = (self.log.clone(), Arc::clone(&self.stop));
        let fd = NotifyFd::from_owned(listener);
        let spawned = std::thread::Builder::new()
            .name(format!("seccomp-{pid}"))
            .spawn(
                move || match serve_as(&fd, &log, &stop, AuditSource::Guest) {
                    Ok(summary) => tracing::debug!(pid, ?summary, "seccomp listener done"),
                    Err(err) => tracing::error!(pid, %err, "seccomp listener failed"),
                },
            );
        if let Err(err) = spawned {
            // The listener is dropped with the closure: the audited calls then fail with ENOSYS,
            // still refused, but unrecorded; say so.
            tracing::error!(pid, %err, "cannot start a seccomp listener thread");
        }
    }

    /// Stops every listener thread within `hearth_seccomp::notify::POLL_INTERVAL`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn page(&self, since: u64, limit: usize) -> AuditPage {
        self.log.lock().page_since(since, limit)
    }
}

/// `GET /v1/audit`.
pub fn handle(audit: &GuestAudit, query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query_param(query, name)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        ErrorKind::BadRequest,
                        format!("{name} must be a non-negative integer, got {v:?}"),
                    )
                })
            })
            .transpose()
    };
    let since = number("since")?.unwrap_or(0);
    let limit = number("limit")?
        .map_or(MAX_PAGE, |n| usize::try_from(n).unwrap_or(MAX_PAGE))
        .clamp(1, MAX_PAGE);
    Ok(json(StatusCode::OK, &audit.page(since, limit)))
}
