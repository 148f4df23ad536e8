//! Where hearth keeps things and which tools it uses, from flags, environment or defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_net::{FirewallConfig, FirewallManager};

use hearth_image::VmImages;
use hearth_sandbox::backend::{OciBackend, OciRuntime, OciRuntimeKind};

use crate::sandboxes::Backends;
use hearth_sandbox::dirs::RuntimeDirs;

use crate::cli::GlobalArgs;
use crate::exit::{CliError, ErrorKind};
use crate::firecracker::FirecrackerSettings;
use crate::sandboxes::SandboxManager;
use crate::store::{SqliteSlotStore, Store};
use hearth_sandbox::backend::BackendKind;

/// Default runtime root when running as root: volatile, gone after a reboot like the sandboxes.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/hearth";
/// Default state dir when running as root: the database survives reboots.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hearth";

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub oci_runtime: Option<OciRuntimeKind>,
    pub guest_binary: PathBuf,
    /// Where sandboxes' allowed names are resolved (`None`: the host's resolv.conf).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Which Firecracker and jailer to use, and whether to skip the jailer.
    pub firecracker: FirecrackerSettings,
}

impl Settings {
    pub fn from_args(args: &GlobalArgs) -> Result<Self, CliError> {
        let oci_runtime = args
            .oci_runtime
            .as_deref()
            .map(str::parse::<OciRuntimeKind>)
            .transpose()
            .map_err(|err| CliError::new(crate::exit::ErrorKind::BadInput, err.to_string()))?;
        Ok(Self {
            runtime_dir: args.runtime_dir.clone().unwrap_or_else(default_runtime_dir),
            state_dir: args.state_dir.clone().unwrap_or_else(default_state_dir),
            oci_runtime,
            guest_binary: args
                .guest_binary
                .clone()
                .unwrap_or_else(default_guest_binary),
            dns_upstream: args.dns_upstream,
            firecracker: FirecrackerSettings {
                firecracker: args.firecracker_bin.clone(),
                jailer: args.jailer_bin.clone(),
                direct: args.firecracker_direct,
                vmm_filter: args
                    .firecracker_seccomp
                    .as_deref()
                    .map(crate::firecracker::parse_vmm_filter)
                    .transpose()
                    .map_err(|err| CliError::new(crate::exit::ErrorKind::BadInput, err))?
                    .unwrap_or_default(),
            },
        })
    }

    /// Opens just the store (for commands that only read records).
    pub async fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.state_dir).await?)
    }

    /// Opens the store, the runtime root and the backend.
    pub async fn manager(&self) -> anyhow::Result<SandboxManager> {
        require_root()?;
        let dirs = RuntimeDirs::open(&self.runtime_dir)?;
        let store = Store::open(&self.state_dir).await?;
        let runtime = OciRuntime::detect(self.oci_runtime, dirs.runtime_state_dir())
            .map_err(|err| CliError::new(ErrorKind::HostLacks, err.to_string()))?;
        let slots = SqliteSlotStore::new(store.clone(), tokio::runtime::Handle::current());
        let firewall = FirewallManager::new(FirewallConfig::default(), Arc::new(slots))
            .map_err(|err| CliError::new(ErrorKind::HostLacks, err.to_string()))?;
        let mut backends = Backends::new(Arc::new(OciBackend::new(runtime, dirs.clone())));
        if let Some(qemu) = crate::vm::qemu_backend(&self.state_dir, &dirs) {
            backends.add(qemu);
        }
        let images = VmImages::new(&self.state_dir);
        let (firecracker, missing) =
            crate::firecracker::firecracker_backend(&self.firecracker, &dirs, &images);
        if let Some(backend) = firecracker {
            backends.add(backend);
        }
        if let Some(reason) = missing {
            backends.mark_missing(BackendKind::Firecracker, reason);
        }
        Ok(SandboxManager {
            store,
            dirs,
            backends,
            guest_binary: self.guest_binary.clone(),
            firewall: Arc::new(firewall),
            dns_upstream: self.dns_upstream,
            templates: hearth_template::TemplateStore::new(&self.state_dir),
            static_guest: std::sync::OnceLock::new(),
        })
    }
}

/// Sandboxes need root today (namespaces, cgroups, nftables); say so plainly up front.
fn require_root() -> Result<(), CliError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(CliError::new(
            ErrorKind::HostLacks,
            "hearth needs root to create namespaces and cgroups; run it with sudo",
        ))
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn default_runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from(DEFAULT_RUNTIME_DIR);
    }
    std::env::var_os("XDG_RUNTIME_DIR").map_or_else(
        || PathBuf::from(DEFAULT_RUNTIME_DIR),
        |dir| Path::new(&dir).join("hearth"),
    )
}

fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from(DEFAULT_STATE_DIR);
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(DEFAULT_STATE_DIR),
        |home| Path::new(&home).join(".local/share/hearth"),
    )
}

/// A statically linked `hearth-guest`, which a template's root (with its own libc, or none) can
/// run: the configured guest if it is one, else the static build beside a cargo target dir
/// (`<target>/x86_64-unknown-linux-gnu/release/hearth-guest`, what the README's build makes).
pub(crate) fn static_guest_binary(configured: &Path) -> Option<PathBuf> {
    let is_static = |path: &Path| {
        std::fs::read(path)
            .ok()
            .and_then(|data| hearth_image::is_static_executable(&data).ok())
            .unwrap_or(false)
    };
    if is_static(configured) {
        return Some(configured.to_owned());
    }
    let target_dir = configured.parent()?.parent()?;
    let built = target_dir.join("x86_64-unknown-linux-gnu/release/hearth-guest");
    is_static(&built).then_some(built)
}

/// `hearth-guest` is installed next to `hearth` (cargo puts both in the same target dir).
fn default_guest_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("hearth-guest")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/hearth/hearth-guest"))
}
