//! The supervisor's network duty: the sandbox's DNS resolver and its drop log.
//!
//! Both need a live process for as long as the sandbox runs, like the seccomp notify fd:
//! - the resolver answers on the sandbox's host-side address (what its `resolv.conf` names) and
//!   opens the addresses of allowed names in the sandbox's nft sets (see
//!   [`hearth_net::dns`]); without it, `--allow domain` would open nothing;
//! - the drop reader binds the sandbox's own nflog group (`FirewallConfig::log_group_of` its
//!   slot: the kernel lets one socket bind a group, and each supervisor reads only its sandbox)
//!   and records every logged drop into a bounded [`DropLog`], which the flusher stores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_net::dns::{system_upstream, DomainRule};
use hearth_net::droplog::{DropLogError, DEFAULT_CAPACITY};
use hearth_net::{
    DnsError, DropLog, DropSnapshot, NetPolicy, NflogError, NflogReader, ResolverConfig,
    ResolverHandle, SandboxLink, SandboxResolver,
};
use serde::{Deserialize, Serialize};

/// How long one nflog read waits before the reader looks at `stop` again.
const NFLOG_POLL: Duration = Duration::from_millis(250);

/// What the supervisor needs to know of the sandbox's network (handed over as JSON on its
/// command line by `create`, which has just set the network up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDuty {
    pub link: SandboxLink,
    pub policy: NetPolicy,
    /// The sandbox's namespace: when it is gone, so is the sandbox.
    pub netns: PathBuf,
    /// Where allowed names are resolved; `None`: the host's `/etc/resolv.conf`.
    pub dns_upstream: Option<SocketAddr>,
}

/// Why the network duty could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetDutyError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Nflog(#[from] NflogError),
    #[error(transparent)]
    DropLog(#[from] DropLogError),
    #[error("cannot start the drop log reader thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The running resolver and drop reader of one sandbox.
#[derive(Debug)]
pub struct NetWatch {
    resolver: Option<ResolverHandle>,
    drops: Arc<Mutex<DropLog>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    netns: PathBuf,
}

impl NetWatch {
    /// Binds the nflog group and starts the resolver. Any failure fails the create: a sandbox
    /// whose allowlist names cannot be resolved, or whose drops would go unrecorded, is refused.
    pub fn start(duty: &NetDuty) -> Result<Self, NetDutyError> {
        let mut nflog = NflogReader::bind(duty.link.log_group)?;
        let resolver = start_resolver(duty)?;
        let drops = Arc::new(Mutex::new(DropLog::new(DEFAULT_CAPACITY)?));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (drops, stop) = (Arc::clone(&drops), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("nflog-reader".into())
                .spawn(move || read_drops(&mut nflog, &drops, &stop))
                .map_err(NetDutyError::Thread)?
        };
        Ok(Self {
            resolver,
            drops,
            stop,
            reader: Some(reader),
            netns: duty.netns.clone(),
        })
    }

    pub fn snapshot(&self) -> DropSnapshot {
        lock(&self.drops).snapshot()
    }

    /// Whether the sandbox's namespace is gone (teardown removed it, or reconciliation did).
    pub fn network_gone(&self) -> bool {
        !self.netns.exists()
    }

    /// Stops the resolver (waiting for it) and tells the reader to stop; the reader is not
    /// waited for, since it notices only within NFLOG_POLL and the supervisor is exiting.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self
            .reader
            .take()
            .is_some_and(|reader| reader.is_finished())
        {
            tracing::debug!("the nflog reader had already ended");
        }
        if let Some(resolver) = self.resolver.take() {
            if let Err(err) = resolver.stop() {
                tracing::error!(%err, "stopping the sandbox resolver");
            }
        }
    }
}

/// The resolver, when the sandbox has a use for one. With no domain rules every name is
/// answered NXDOMAIN without asking upstream, so a host without a nameserver is no reason to
/// refuse the sandbox; with domain rules it is.
fn start_resolver(duty: &NetDuty) -> Result<Option<ResolverHandle>, NetDutyError> {
    let rules = DomainRule::from_policy(&duty.policy);
    let upstream = match duty.dns_upstream {
        Some(addr) => addr,
        None => match system_upstream() {
            Ok(addr) => addr,
            Err(err) if rules.is_empty() => {
                tracing::warn!(%err, "no upstream nameserver; names will not resolve");
                return Ok(None);
            }
            Err(err) => return Err(err.into()),
        },
    };
    let config = ResolverConfig::for_sandbox(&duty.link, &duty.policy, upstream);
    Ok(Some(SandboxResolver::start(config)?))
}

fn read_drops(nflog: &mut NflogReader, drops: &Mutex<DropLog>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match nflog.recv(NFLOG_POLL) {
            Ok(events) => {
                let now = unix_ms();
                let mut log = lock(drops);
                for event in events {
                    log.record(event, now);
                }
            }
            Err(err) => {
                tracing::warn!(%err, "reading the drop log failed");
                std::thread::sleep(NFLOG_POLL);
            }
        }
    }
}

fn lock(drops: &Mutex<DropLog>) -> MutexGuard<'_, DropLog> {
    drops.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
