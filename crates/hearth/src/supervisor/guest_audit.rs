//! Copying a microVM guest's seccomp audit into the sandbox's (the relay duty's companion).
//!
//! Inside a VM, `hearth-guest` itself answers the calls the policy audits (see its `audit`
//! module) and keeps them in a bounded log. Before every flush the supervisor asks for the
//! entries past its cursor on `GET /v1/audit`, through the same guest socket every other caller
//! uses, and records them in the sandbox's log, so they reach the store, `hearth sandbox audit`
//! and a task's timeline exactly like an OCI sandbox's.

use std::path::PathBuf;
use std::time::Duration;

use hearth_sandbox::guest_client::GuestClient;
use hearth_seccomp::audit::SharedAuditLog;

/// One read may not hold up the flush for long: a paused VM answers nothing until resumed.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Pages read per flush at most; the rest waits for the next flush.
const MAX_PAGES: usize = 16;

/// The cursor into one guest's log.
#[derive(Debug)]
pub struct GuestAuditReader {
    client: GuestClient,
    /// The next guest `seq` not yet copied.
    since: u64,
    /// Entries the guest's ring dropped before they were read (logged as they are found).
    missed: u64,
    /// Set once the sandbox is running; nothing is read before.
    started: bool,
}

impl GuestAuditReader {
    pub fn new(guest_socket: PathBuf) -> Self {
        Self {
            client: GuestClient::new(guest_socket),
            since: 0,
            missed: 0,
            started: false,
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    pub fn start(&mut self) {
        self.started = true;
    }

    /// Copies what the guest recorded since the last call into `audit`; returns how many entries.
    /// An unreachable guest (booting, paused, gone) is not an error: the entries wait for the
    /// next flush.
    pub async fn copy_into(&mut self, audit: &SharedAuditLog) -> usize {
        let mut copied = 0;
        for _ in 0..MAX_PAGES {
            let page =
                match tokio::time::timeout(READ_TIMEOUT, self.client.seccomp_audit(self.since))
                    .await
                {
                    Ok(Ok(page)) => page,
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "guest audit not read this flush");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!("guest audit read timed out (VM paused?)");
                        break;
                    }
                };
            let missed = page.missed_since(self.since);
            if missed > 0 {
                self.missed += missed;
                tracing::warn!(
                    missed,
                    total_missed = self.missed,
                    "guest audit entries were dropped before the host read them"
                );
            }
            let next = page.next_since(self.since);
            let count = page.entries.len();
            {
                let mut log = audit.lock();
                for entry in page.entries {
                    log.record(entry);
                }
            }
            copied += count;
            self.since = next;
            if count == 0 || self.since >= page.total {
                break;
            }
        }
        copied
    }
}
