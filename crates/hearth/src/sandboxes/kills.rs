//! Recording the seccomp kills the supervisor never sees.

use hearth_proto::ExitStatus;
use hearth_sandbox::SandboxId;
use hearth_seccomp::audit::{native_arch, AuditAction, AuditEntry, AuditSource, DEFAULT_WINDOW};

use super::SandboxManager;

/// SIGSYS: what a seccomp `kill_process` (or an unhandled `trap`) delivers.
const SIGSYS: i32 = 31;

impl SandboxManager {
    /// Records a command that died of SIGSYS: the kernel kills for `kill_process` without
    /// telling any listener, so the exit status is the only trace hearth gets (the syscall
    /// number is only in the kernel's audit log, `dmesg | grep type=1326`). Every path that runs
    /// a command in a sandbox calls this (CLI exec, API exec, a task's agent). A failure to
    /// record is logged, not fatal: the command's own result matters more.
    pub async fn record_exit(&self, id: &SandboxId, argv0: &str, status: &ExitStatus) {
        if status.signal != Some(SIGSYS) {
            return;
        }
        let mut entry = AuditEntry::new(
            native_arch(),
            -1,
            [0; 6],
            AuditAction::KilledProcess,
            AuditSource::Guest,
        );
        entry.comm = Some(argv0.rsplit('/').next().unwrap_or(argv0).to_owned());
        let window_ms = u64::try_from(DEFAULT_WINDOW.as_millis()).unwrap_or(60_000);
        let capacity = hearth_seccomp::audit::DEFAULT_CAPACITY as u64;
        if let Err(err) = self
            .store
            .record_seccomp_entry(id, &entry, window_ms, capacity)
            .await
        {
            tracing::warn!(%id, %err, "cannot record the SIGSYS kill in the audit");
        }
    }
}
