//! The per-sandbox supervisor: the process that answers the sandbox's audited system calls and
//! keeps the audit, and that resolves its allowed names and records its firewall drops
//! ([`net`]).
//!
//! hearth has no daemon, and a seccomp notification fd, a DNS resolver and an nflog socket must
//! be held by a live process for as long as the sandbox runs, so every sandbox whose policy
//! audits denials or that has a network link gets its own small process, `hearth sandbox
//! supervise ID [--seccomp] [--net JSON]` (hidden), with this lifecycle (a supervisor without
//! the seccomp duty ends when the sandbox's network namespace is gone, or when stopped):
//!
//! 1. **Start** ([`launch::start`]): `SandboxManager::create` spawns it before `runc run`, stdin
//!    null, stdout a pipe, stderr `<sandbox dir>/supervisor.log`; it calls `setsid` first so a
//!    Ctrl-C aimed at the CLI can't reach it. The parent records `PID STARTTIME` in
//!    `supervisor.pid` (created exclusively) right after the spawn.
//! 2. **Ready**: the supervisor opens the store, clears audit rows of an earlier sandbox with the
//!    same id, binds `listenerPath` (`seccomp.sock`, 0600 in the 0700 sandbox dir) and prints
//!    `ready`. The parent waits up to [`READY_TIMEOUT`]; anything else (exit, timeout, another
//!    line) fails the create, which removes everything. runc itself refuses to start a container
//!    whose listener it can't reach, so no sandbox ever runs unaudited.
//! 3. **Serve** ([`run`]): an accept thread takes each fd the runtime sends (one from `runc run`,
//!    one more per `runc exec`) and starts a server thread per fd that answers EPERM and records
//!    into a bounded [`hearth_seccomp::audit::SharedAuditLog`]. Every [`FLUSH_INTERVAL`], and on
//!    SIGUSR1 (what `hearth sandbox audit` sends to get exact counts), the new window counts and
//!    ring entries go to SQLite.
//! 4. **Stop**: when the container's filter is gone (its init died: POLLHUP on the first fd), on
//!    SIGTERM or SIGINT, or when no runtime connected within [`FIRST_CONNECT_TIMEOUT`], it
//!    flushes a last time, records why it ended, and exits. Teardown calls [`launch::stop`]
//!    after removing the container: SIGTERM through a pidfd (checked against the recorded start
//!    time, so a reused pid is never signalled), SIGKILL after [`STOP_GRACE`].
//! 5. **MicroVMs**: with the relay duty, `hearth-guest` answers the audited calls itself; the
//!    supervisor copies its log over `GET /v1/audit` before every flush ([`guest_audit`]).
//! 6. **Crash**: if the supervisor dies, the kernel drops the notification fd and every audited
//!    call in the sandbox fails with ENOSYS from then on (denied, but no longer recorded).
//!    Reconciliation kills supervisors whose sandbox is abandoned or unknown.

mod guest_audit;
pub mod launch;
pub mod net;
mod proc;
pub mod relay;
pub mod run;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use hearth_sandbox::pidfd::PidfdError;
use hearth_sandbox::SandboxId;

pub use launch::{remove_cgroup, start_if_needed, stop, stop_strays};

/// How long `create` waits for the supervisor's `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor writes its counts to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// A supervisor that no runtime ever connects to gives up after this (its creator died).
pub const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Between SIGTERM and SIGKILL when stopping a supervisor.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Overrides the program started as supervisor (tests use it to simulate one that fails).
pub const EXE_ENV: &str = "HEARTH_SUPERVISOR_EXE";

/// Errors of the supervisor, on both sides of its pipe.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot find hearth's own binary to start the seccomp supervisor: {0}")]
    Exe(#[source] io::Error),
    #[error("cannot start seccomp supervisor {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("cannot start the supervisor's accept thread: {0}")]
    Thread(#[source] io::Error),
    #[error("cannot write {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {content:?}")]
    PidFile { path: PathBuf, content: String },
    #[error("seccomp supervisor of sandbox {id} did not become ready: {why}{log}")]
    NotReady {
        id: SandboxId,
        why: String,
        log: String,
    },
    #[error("stopping seccomp supervisor: {0}")]
    Stop(#[from] PidfdError),
    #[error("seccomp supervisor {pid} still runs after SIGKILL")]
    StillRunning { pid: i32 },
    #[error("cannot install a handler for {name}: {source}")]
    Signal {
        name: &'static str,
        source: io::Error,
    },
    #[error("cannot encode the supervisor's network duty: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Relay(#[from] hearth_sandbox::backend::vm::relay::RelayError),
    #[error(transparent)]
    Notify(#[from] hearth_seccomp::notify::NotifyError),
    #[error(transparent)]
    Audit(#[from] hearth_seccomp::audit::AuditError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Dirs(#[from] hearth_sandbox::dirs::DirsError),
    #[error("the supervisor's cgroup: {0}")]
    Cgroup(#[source] hearth_sandbox::vmm_cgroup::VmmCgroupError),
}
