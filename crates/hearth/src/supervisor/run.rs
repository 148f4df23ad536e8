//! The supervisor's own side: `hearth sandbox supervise ID`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_sandbox::dirs::RuntimeDirs;
use hearth_sandbox::SandboxId;
use hearth_seccomp::audit::{AuditConfig, AuditWindow, SharedAuditLog};
use hearth_seccomp::notify::{spawn_server, NotifyError, NotifyListener, ServeSummary};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::guest_audit::GuestAuditReader;
use super::launch::READY_LINE;
use super::net::{NetDuty, NetWatch};
use super::relay::{RelayDuty, RelayTask};
use super::{SupervisorError, FIRST_CONNECT_TIMEOUT, FLUSH_INTERVAL};
use crate::store::{FlushTotals, SandboxStatus, Store};

/// Keeps the sandbox's host-side logs under their cap (see `hearth_sandbox::logs`).
fn cap_logs(dirs: &hearth_sandbox::dirs::SandboxDirs) {
    for path in [
        dirs.guest_log(),
        dirs.vm_console_log(),
        dirs.vm_log(),
        dirs.supervisor_log(),
    ] {
        match hearth_sandbox::logs::cap(&path, hearth_sandbox::logs::LOG_CAP_BYTES) {
            Ok(true) => tracing::info!(path = %path.display(), "log over its cap; cut"),
            Ok(false) => {}
            Err(err) => tracing::warn!(path = %path.display(), %err, "cannot cap log"),
        }
    }
}

/// How long the exit path waits for the notify threads before leaving them to the process's end.
const JOIN_WAIT: Duration = Duration::from_millis(20);
/// How long one accept waits before the accept thread looks at `stop` again.
const ACCEPT_POLL: Duration = Duration::from_millis(250);
/// Window rows kept for retry while the store refuses writes; past it the oldest are dropped
/// (and logged) rather than growing without bound.
const MAX_UNSAVED_WINDOWS: usize = 65_536;

type Server = JoinHandle<Result<ServeSummary, NotifyError>>;

/// Server threads, the first being the container init's (its end is the sandbox's end).
#[derive(Debug, Default)]
struct Servers {
    threads: Vec<Server>,
    /// Set when no runtime connected within [`FIRST_CONNECT_TIMEOUT`].
    abandoned: bool,
}

/// What one supervisor looks after; `create` decides (see [`super::launch::start_if_needed`]).
#[derive(Debug, Clone, Default)]
pub struct Duties {
    /// Answer and record the calls the sandbox's seccomp policy audits.
    pub seccomp: bool,
    /// Resolve the sandbox's allowed names and record its firewall drops.
    pub net: Option<NetDuty>,
    /// Serve the guest socket and forward it into the sandbox's VM.
    pub relay: Option<RelayDuty>,
}

/// Runs the supervisor of `id` until its sandbox is gone or it is told to stop.
pub async fn run(
    id: SandboxId,
    runtime_dir: &Path,
    state_dir: &Path,
    duties: Duties,
) -> anyhow::Result<u8> {
    // Its own session: a Ctrl-C meant for the `hearth` that started it must not reach it.
    if let Err(err) = nix::unistd::setsid() {
        tracing::debug!(%err, "setsid failed (already a group leader)");
    }
    let dirs = RuntimeDirs::open(runtime_dir)?.sandbox(&id);
    let store = Store::open_with(state_dir, 1).await?;
    let config = AuditConfig::default();
    let audit = SharedAuditLog::new(config)?;
    let mut signals = Signals::install()?;
    let listener = if duties.seccomp {
        Some(NotifyListener::bind(&dirs.seccomp_socket())?)
    } else {
        None
    };
    let net = duties.net.as_ref().map(NetWatch::start).transpose()?;
    // Bound before `ready`: the creator's health wait connects to the guest socket next.
    let relay = duties
        .relay
        .as_ref()
        .map(|duty| RelayTask::start(duty, &dirs.guest_socket()))
        .transpose()?;
    let capacity = u64::try_from(config.capacity).unwrap_or(u64::MAX);
    // The state row is the supervisor's bookkeeping (`audit` waits on its flush_seq) even when
    // there is no seccomp duty: its counts then stay zero.
    store
        .begin_seccomp_audit(&id, std::process::id(), capacity)
        .await?;
    if let Some(net) = &net {
        let capacity = u64::try_from(net.snapshot().capacity).unwrap_or(u64::MAX);
        store.begin_network_drops(&id, capacity).await?;
    }
    announce_ready()?;
    tracing::info!(%id, seccomp = duties.seccomp, net = net.is_some(), relay = relay.is_some(), "supervisor ready");

    let stop = Arc::new(AtomicBool::new(false));
    let servers = Arc::new(Mutex::new(Servers::default()));
    let acceptor = match listener {
        Some(listener) => {
            let (audit, stop, servers) = (audit.clone(), Arc::clone(&stop), Arc::clone(&servers));
            Some(
                std::thread::Builder::new()
                    .name("seccomp-accept".into())
                    .spawn(move || accept_loop(&listener, &audit, &stop, &servers))
                    .map_err(SupervisorError::Thread)?,
            )
        }
        None => None,
    };
    let mut flusher = Flusher::new(store, id.clone(), audit, capacity);
    if relay.is_some() {
        flusher.guest = Some(GuestAuditReader::new(dirs.guest_socket()));
    }
    let ended = loop {
        tokio::select! {
            _ = signals.term.recv() => break "terminated",
            _ = signals.int.recv() => break "interrupted",
            _ = signals.usr1.recv() => flusher.flush(net.as_ref(), None).await,
            () = tokio::time::sleep(FLUSH_INTERVAL) => {
                flusher.flush(net.as_ref(), None).await;
                cap_logs(&dirs);
                if let Some(reason) = finished(&servers, acceptor.is_some(), net.as_ref(), relay.is_some().then(|| dirs.base().to_path_buf()).as_deref()) {
                    break reason;
                }
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(acceptor) = acceptor {
        // The accept thread notices `stop` within ACCEPT_POLL; teardown should not wait that
        // long for a summary in the log. Whatever has not joined by then ends with the process.
        let threads = tokio::task::spawn_blocking(move || join_all(acceptor, &servers));
        match tokio::time::timeout(JOIN_WAIT, threads).await {
            Ok(Err(err)) => tracing::warn!(%err, "joining the notify threads failed"),
            Ok(Ok(())) => {}
            Err(_) => tracing::debug!("notify threads still polling at exit"),
        }
    }
    flusher.flush(net.as_ref(), Some(ended)).await;
    if let Some(net) = net {
        tokio::task::spawn_blocking(move || net.stop()).await?;
    }
    if let Some(relay) = relay {
        relay.stop().await;
    }
    tracing::info!(%id, ended, "supervisor exiting");
    Ok(0)
}

/// SIGTERM/SIGINT stop the supervisor; SIGUSR1 asks for a flush now.
struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
}

impl Signals {
    fn install() -> Result<Self, SupervisorError> {
        let one = |kind: SignalKind, name| {
            signal(kind).map_err(|source| SupervisorError::Signal { name, source })
        };
        Ok(Self {
            term: one(SignalKind::terminate(), "SIGTERM")?,
            int: one(SignalKind::interrupt(), "SIGINT")?,
            usr1: one(SignalKind::user_defined1(), "SIGUSR1")?,
        })
    }
}

/// The one line the parent waits for; stdout is not used again.
fn announce_ready() -> Result<(), SupervisorError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY_LINE}")
        .and_then(|()| out.flush())
        .map_err(|source| SupervisorError::File {
            path: "stdout".into(),
            source,
        })
}

/// Why the supervisor should end now, if it should: the init's filter is gone, nobody came, or
/// (for a supervisor without seccomp duty) the sandbox's network namespace or directory is gone.
fn finished(
    servers: &Mutex<Servers>,
    seccomp: bool,
    net: Option<&NetWatch>,
    sandbox_dir: Option<&Path>,
) -> Option<&'static str> {
    if !seccomp {
        if net.is_some_and(NetWatch::network_gone) {
            return Some("network gone");
        }
        return sandbox_dir
            .is_some_and(|dir| !dir.exists())
            .then_some("sandbox gone");
    }
    let servers = servers.lock().unwrap_or_else(|p| p.into_inner());
    if servers.abandoned {
        return Some("no runtime connected");
    }
    servers
        .threads
        .first()
        .filter(|init| init.is_finished())
        .map(|_| "filter gone")
}

/// Accepts every runtime connection (`runc run`, then one per `runc exec`) and serves each fd on
/// its own thread, until `stop`.
fn accept_loop(
    listener: &NotifyListener,
    audit: &SharedAuditLog,
    stop: &Arc<AtomicBool>,
    servers: &Mutex<Servers>,
) {
    let started = Instant::now();
    let mut accepted = 0u32;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept_one(ACCEPT_POLL) {
            Ok(conn) => {
                accepted += 1;
                tracing::info!(
                    pid = conn.state.pid,
                    n = accepted,
                    "runtime sent a seccomp fd"
                );
                let name = format!("seccomp-notify-{accepted}");
                match spawn_server(name, conn.fd, audit.clone(), Arc::clone(stop)) {
                    Ok(handle) => lock(servers).threads.push(handle),
                    Err(err) => tracing::error!(%err, "cannot serve a seccomp fd"),
                }
            }
            Err(NotifyError::AcceptTimeout { .. }) => {
                if accepted == 0 && started.elapsed() > FIRST_CONNECT_TIMEOUT {
                    lock(servers).abandoned = true;
                    return;
                }
            }
            // One broken connection must not end the audit of the others.
            Err(err) => {
                tracing::warn!(%err, "a runtime connection failed");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn lock(servers: &Mutex<Servers>) -> std::sync::MutexGuard<'_, Servers> {
    servers.lock().unwrap_or_else(|p| p.into_inner())
}

fn join_all(acceptor: JoinHandle<()>, servers: &Mutex<Servers>) {
    let _ = acceptor.join();
    let threads = std::mem::take(&mut lock(servers).threads);
    for thread in threads {
        match thread.join() {
            Ok(Ok(summary)) => tracing::info!(?summary, "seccomp fd served"),
            Ok(Err(err)) => tracing::error!(%err, "serving a seccomp fd failed"),
            Err(_) => tracing::error!("a seccomp notify thread panicked"),
        }
    }
}

/// Moves what the log gathered since the last flush into the store.
struct Flusher {
    store: Store,
    id: SandboxId,
    audit: SharedAuditLog,
    capacity: u64,
    /// The next ring `seq` not yet stored.
    next_seq: u64,
    /// Windows a failed flush could not store, retried next time.
    unsaved: Vec<AuditWindow>,
    /// The next drop log `seq` not yet stored.
    next_drop_seq: u64,
    /// A microVM guest whose own audit is copied in before each flush.
    guest: Option<GuestAuditReader>,
}

impl Flusher {
    fn new(store: Store, id: SandboxId, audit: SharedAuditLog, capacity: u64) -> Self {
        Self {
            store,
            id,
            audit,
            capacity,
            next_seq: 0,
            unsaved: Vec::new(),
            next_drop_seq: 0,
            guest: None,
        }
    }

    /// Stores the drops, then the seccomp audit: `audit` waits for the latter's `flush_seq`,
    /// so once it moves both are in the store.
    async fn flush(&mut self, net: Option<&NetWatch>, ended: Option<&str>) {
        if let Some(net) = net {
            let snapshot = net.snapshot();
            if snapshot.total > self.next_drop_seq {
                match self
                    .store
                    .flush_network_drops(&self.id, &snapshot, self.next_drop_seq)
                    .await
                {
                    Ok(()) => self.next_drop_seq = snapshot.total,
                    Err(err) => tracing::error!(%err, "cannot store the drop log; retrying"),
                }
            }
        }
        if let Some(guest) = &mut self.guest {
            // Only once `create` has finished: a VM restored from a snapshot holds the source
            // sandbox's log until its thaw restarts it.
            if !guest.started() {
                match self.store.get_sandbox(&self.id).await {
                    Ok(Some(record)) if record.status == SandboxStatus::Running => guest.start(),
                    Ok(_) => {}
                    Err(err) => tracing::debug!(%err, "sandbox status unknown this flush"),
                }
            }
            if guest.started() {
                guest.copy_into(&self.audit).await;
            }
        }
        self.flush_seccomp(ended).await;
    }

    async fn flush_seccomp(&mut self, ended: Option<&str>) {
        let (windows, recent, totals) = {
            let mut log = self.audit.lock();
            let totals = FlushTotals {
                total: log.total(),
                evicted: log.evicted(),
                capacity: self.capacity,
            };
            (log.drain_windows(), log.recent_since(self.next_seq), totals)
        };
        let mut windows = windows;
        windows.append(&mut self.unsaved);
        let result = self
            .store
            .flush_seccomp_audit(&self.id, &windows, &recent, totals, ended)
            .await;
        match result {
            Ok(_) => self.next_seq = totals.total,
            Err(err) => {
                tracing::error!(%err, "cannot store the seccomp audit; retrying next flush");
                let excess = windows.len().saturating_sub(MAX_UNSAVED_WINDOWS);
                if excess > 0 {
                    tracing::error!(dropped = excess, "audit windows dropped: store unavailable");
                }
                self.unsaved = windows.split_off(excess);
            }
        }
    }
}
