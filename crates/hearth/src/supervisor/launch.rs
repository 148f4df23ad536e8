//! The parent's side: starting a supervisor and waiting for it to be ready, stopping it, and
//! finding supervisors nobody owns any more.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hearth_sandbox::dirs::SandboxDirs;
use hearth_sandbox::pidfd::Pidfd;
use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::vmm_cgroup::{CgroupParent, VmmCgroup, VmmLimits};
use hearth_sandbox::SandboxId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::net::NetDuty;
use super::proc::{self, ProcessStamp};
use super::relay::RelayDuty;
use super::{SupervisorError, EXE_ENV, READY_TIMEOUT, STOP_GRACE};
use crate::store::Store;

/// The line a supervisor prints once its listener is bound.
pub const READY_LINE: &str = "ready";

/// Starts the sandbox's supervisor when it has a duty (its runtime hands audited calls to a
/// listener, see [`SandboxSpec::seccomp_listener`], or
/// it has a network link to resolve names for and log drops of), and waits until it is ready.
/// Returns its pid, or `None` when there is nothing to supervise.
pub async fn start_if_needed(
    spec: &SandboxSpec,
    dirs: &SandboxDirs,
    runtime_dir: &Path,
    state_dir: &Path,
    net: Option<&NetDuty>,
    relay: Option<&RelayDuty>,
) -> Result<Option<u32>, SupervisorError> {
    // The backend names this sandbox's socket as the runtime's listener (`dirs.seccomp_socket()`).
    let seccomp = spec.seccomp_listener();
    if !seccomp && net.is_none() && relay.is_none() {
        return Ok(None);
    }
    let mut child = spawn(&spec.id, dirs, runtime_dir, state_dir, seccomp, net, relay)?;
    let pid = child.id().unwrap_or_default();
    let ready = match record_pid(dirs, pid) {
        Ok(()) => wait_ready(&mut child).await,
        Err(err) => Err(err.to_string()),
    };
    if let Err(why) = ready {
        // Not ready means not trusted: make sure it is gone before the create cleans up.
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(SupervisorError::NotReady {
            id: spec.id.clone(),
            why,
            log: log_tail(&dirs.supervisor_log()),
        });
    }
    // Reap it whenever it exits, should this process live that long (bench, a future daemon).
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    tracing::debug!(id = %spec.id, pid, seccomp, net = net.is_some(), "supervisor ready");
    Ok(Some(pid))
}

fn spawn(
    id: &SandboxId,
    dirs: &SandboxDirs,
    runtime_dir: &Path,
    state_dir: &Path,
    seccomp: bool,
    net: Option<&NetDuty>,
    relay: Option<&RelayDuty>,
) -> Result<Child, SupervisorError> {
    let net = net
        .map(serde_json::to_string)
        .transpose()
        .map_err(SupervisorError::Encode)?;
    let relay = relay
        .map(serde_json::to_string)
        .transpose()
        .map_err(SupervisorError::Encode)?;
    let exe = match std::env::var_os(EXE_ENV) {
        Some(exe) => PathBuf::from(exe),
        None => std::env::current_exe().map_err(SupervisorError::Exe)?,
    };
    let log_path = dirs.supervisor_log();
    // Append mode: the supervisor caps its own log by truncating it (`cap_logs`).
    let log = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|source| SupervisorError::File {
            path: log_path.clone(),
            source,
        })?;
    // The host-side work the sandbox causes is charged to a budget of its own: a flood of
    // denied calls, lookups or drops slows the flooding sandbox, not its neighbours.
    let cgroup = VmmCgroup::create_in(CgroupParent::Supervisors, id, &SUPERVISOR_LIMITS)
        .map_err(SupervisorError::Cgroup)?;
    let join = cgroup.join_fds();
    let mut cmd = Command::new(&exe);
    // SAFETY: the hook only writes "0" to cgroup.procs fds that `cgroup` keeps open until the
    // spawn returns (one write(2) each, no allocation).
    unsafe {
        cmd.pre_exec(move || hearth_sandbox::vmm_cgroup::join_in_child(&join));
    }
    cmd.arg("--runtime-dir")
        .arg(runtime_dir)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["-v", "sandbox", "supervise", id.as_str()])
        .args(seccomp.then_some("--seccomp"))
        .args(net.iter().flat_map(|json| ["--net", json.as_str()]))
        .args(relay.iter().flat_map(|json| ["--relay", json.as_str()]))
        // It needs nothing from the caller's environment but its log filter.
        .env_clear()
        .envs(std::env::var_os("RUST_LOG").map(|v| (OsString::from("RUST_LOG"), v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(false);
    let child = cmd
        .spawn()
        .map_err(|source| SupervisorError::Spawn { exe, source });
    drop(cgroup);
    child
}

/// A supervisor's budget: a quarter of a CPU (it answers every denied call of its sandbox, so a
/// flood of them waits on it), memory for its rings and buffers, a few threads.
const SUPERVISOR_LIMITS: VmmLimits = VmmLimits {
    memory_bytes: 128 << 20,
    cpu_quota_us: 25_000,
    pids: 64,
};

/// Removes a sandbox's supervisor cgroup once its supervisor is gone; a missing one is fine.
pub fn remove_cgroup(id: &SandboxId) -> Result<(), SupervisorError> {
    VmmCgroup::remove_in(CgroupParent::Supervisors, id).map_err(SupervisorError::Cgroup)
}

/// Writes `PID STARTTIME` exclusively, so teardown can tell this process from a later one
/// that got the same pid.
fn record_pid(dirs: &SandboxDirs, pid: u32) -> Result<(), SupervisorError> {
    let path = dirs.supervisor_pid_file();
    let stamp = ProcessStamp::of(pid).map_err(|source| SupervisorError::Read {
        path: PathBuf::from(format!("/proc/{pid}/stat")),
        source,
    })?;
    stamp
        .write_new(&path)
        .map_err(|source| SupervisorError::File { path, source })
}

/// Waits for the `ready` line; the error says what happened instead.
async fn wait_ready(child: &mut Child) -> Result<(), String> {
    let stdout = child.stdout.take().ok_or("its stdout was not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) if line.trim() == READY_LINE => Ok(()),
        Ok(Ok(Some(line))) => Err(format!("it printed {line:?} instead of {READY_LINE:?}")),
        Ok(Ok(None)) => match child.wait().await {
            Ok(status) => Err(format!("it exited ({status})")),
            Err(err) => Err(format!("it closed its stdout ({err})")),
        },
        Ok(Err(err)) => Err(format!("reading its stdout failed: {err}")),
        Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
    }
}

/// The last lines of the supervisor's log, to explain a failure in one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.len() {
        0 => String::new(),
        n => format!(" (log: {})", lines[n.saturating_sub(2)..].join(" | ")),
    }
}

/// The supervisor recorded for a sandbox, if it still runs (same pid *and* start time).
pub fn running(dirs: &SandboxDirs) -> Result<Option<Pidfd>, SupervisorError> {
    let path = dirs.supervisor_pid_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SupervisorError::Read { path, source }),
    };
    let stamp = ProcessStamp::parse(&text).ok_or_else(|| SupervisorError::PidFile {
        path: path.clone(),
        content: text.clone(),
    })?;
    open_if_same(&stamp)
}

/// A pidfd for the process `stamp` describes, or `None` if that process is gone.
fn open_if_same(stamp: &ProcessStamp) -> Result<Option<Pidfd>, SupervisorError> {
    let Ok(pid) = i32::try_from(stamp.pid) else {
        return Ok(None);
    };
    let Some(pidfd) = Pidfd::open(pid)? else {
        return Ok(None);
    };
    // Checked after the pidfd is open: if the start time matches now, the pidfd is that process.
    match ProcessStamp::of(stamp.pid) {
        // A zombie (exited, not yet reaped by whoever inherited it) still has its stat file.
        Ok(now) if now == *stamp && !pidfd.wait(Duration::ZERO)? => Ok(Some(pidfd)),
        _ => Ok(None),
    }
}

/// Stops a sandbox's supervisor: SIGTERM (it flushes and exits), SIGKILL after the grace.
/// Succeeds when there is none or it already exited.
pub fn stop(dirs: &SandboxDirs) -> Result<(), SupervisorError> {
    match running(dirs)? {
        Some(pidfd) => terminate(&pidfd, STOP_GRACE),
        None => Ok(()),
    }
}

fn terminate(pidfd: &Pidfd, grace: Duration) -> Result<(), SupervisorError> {
    pidfd.signal(nix::libc::SIGTERM)?;
    if pidfd.wait(grace)? {
        return Ok(());
    }
    tracing::warn!(
        pid = pidfd.pid(),
        "seccomp supervisor ignored SIGTERM; killing it"
    );
    pidfd.signal(nix::libc::SIGKILL)?;
    if pidfd.wait(Duration::from_secs(5))? {
        Ok(())
    } else {
        Err(SupervisorError::StillRunning { pid: pidfd.pid() })
    }
}

/// Stops every supervisor of this runtime root whose sandbox `keep` rejects (no live record).
/// Returns the ids it stopped.
pub fn stop_strays(
    runtime_dir: &Path,
    keep: impl Fn(&SandboxId) -> bool,
) -> Result<Vec<String>, SupervisorError> {
    let mut stopped = Vec::new();
    for (stamp, id) in proc::supervisors(runtime_dir) {
        if keep(&id) {
            continue;
        }
        if let Some(pidfd) = open_if_same(&stamp)? {
            terminate(&pidfd, STOP_GRACE)?;
            stopped.push(id.to_string());
        }
    }
    Ok(stopped)
}

/// Asks the sandbox's live supervisor for a flush (SIGUSR1) and waits up to `wait` until its
/// `flush_seq` moves. Returns whether a supervisor runs; a slow one is logged, not an error (the
/// stored counts then lag by at most one flush interval).
pub async fn request_flush(
    store: &Store,
    dirs: &SandboxDirs,
    id: &SandboxId,
    wait: Duration,
) -> Result<bool, SupervisorError> {
    let Some(pidfd) = running(dirs)? else {
        return Ok(false);
    };
    let before = store
        .seccomp_audit_state(id)
        .await?
        .map_or(0, |s| s.flush_seq);
    pidfd.signal(nix::libc::SIGUSR1)?;
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        let state = store.seccomp_audit_state(id).await?;
        if state.is_some_and(|s| s.flush_seq > before) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(%id, "the seccomp supervisor did not flush in time; counts may lag a second");
    Ok(true)
}
