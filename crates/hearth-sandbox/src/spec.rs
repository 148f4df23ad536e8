//! What a user asks for when creating a sandbox: resources, workspace, seccomp policy.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::SandboxId;
use crate::net::NetPolicy;
use crate::seccomp::SpecSeccomp;

/// Default memory limit: enough for a compiler or a test suite, small enough to pack many.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 * 1024 * 1024;
/// Default CPU share, in whole CPUs.
pub const DEFAULT_CPUS: f64 = 1.0;
/// Default process limit: room for `make -j`, far below a fork bomb's reach.
pub const DEFAULT_PIDS: u32 = 256;

/// A bad resource flag value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("memory size {0:?} is not a number with an optional K, M or G suffix (e.g. 512M)")]
    BadMemory(String),
    #[error("memory limit {0} bytes is below the 8M minimum a sandbox needs to start")]
    MemoryTooSmall(u64),
    #[error("cpus {0:?} must be a number between 0.01 and 1024 (e.g. 1 or 0.5)")]
    BadCpus(String),
    #[error("pids {0} must be between 8 and 4194304")]
    BadPids(u32),
}

/// Memory in bytes, parsed from `512M`, `2G`, `1048576` (binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBytes(pub u64);

impl FromStr for MemoryBytes {
    type Err = SpecError;
    fn from_str(raw: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadMemory(raw.to_owned());
        let trimmed = raw.trim();
        let (digits, multiplier) = match trimmed.char_indices().last() {
            Some((at, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    _ => return Err(bad()),
                };
                (&trimmed[..at], 1u64 << shift)
            }
            _ => (trimmed, 1),
        };
        let value: u64 = digits.parse().map_err(|_| bad())?;
        let bytes = value.checked_mul(multiplier).ok_or_else(bad)?;
        if bytes < 8 * 1024 * 1024 {
            return Err(SpecError::MemoryTooSmall(bytes));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MemoryBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        if self.0.is_multiple_of(1024 * MIB) {
            write!(f, "{}G", self.0 / (1024 * MIB))
        } else if self.0.is_multiple_of(MIB) {
            write!(f, "{}M", self.0 / MIB)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// A CPU allowance in (possibly fractional) CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cpus(pub f64);

impl FromStr for Cpus {
    type Err = SpecError;
    fn from_str(raw: &str) -> Result<Self, SpecError> {
        match raw.trim().parse::<f64>() {
            Ok(value) if (0.01..=1024.0).contains(&value) => Ok(Self(value)),
            _ => Err(SpecError::BadCpus(raw.to_owned())),
        }
    }
}

impl Cpus {
    /// The CFS period and quota that give this share: quota/period = cpus.
    pub fn cfs_quota(self, period_us: u64) -> i64 {
        // Bounded by the 1024-CPU maximum and a period under a second: no overflow or
        // truncation beyond a microsecond.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let quota = (self.0 * period_us as f64).round() as i64;
        quota.max(1000)
    }
}

/// Resource limits: memory, CPU and processes by the sandbox's cgroup, disk by the size of its
/// private workspace's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResourceLimits {
    pub memory: MemoryBytes,
    pub cpus: Cpus,
    pub pids: u32,
    /// Size of the private workspace (sizes parse like memory's); records from before this
    /// field get the default.
    #[serde(default = "default_disk")]
    pub disk: MemoryBytes,
}

fn default_disk() -> MemoryBytes {
    MemoryBytes(crate::workspace::DEFAULT_DISK_BYTES)
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            memory: MemoryBytes(DEFAULT_MEMORY_BYTES),
            cpus: Cpus(DEFAULT_CPUS),
            pids: DEFAULT_PIDS,
            disk: default_disk(),
        }
    }
}

impl ResourceLimits {
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(8..=4_194_304).contains(&self.pids) {
            return Err(SpecError::BadPids(self.pids));
        }
        Ok(())
    }
}

/// Everything needed to create one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "StoredSpec")]
pub struct SandboxSpec {
    pub id: SandboxId,
    pub limits: ResourceLimits,
    /// Host directory mounted read-write at `/workspace`; `None` gives an empty private one.
    pub workspace: Option<PathBuf>,
    /// The workload's seccomp policy, hardened, on every backend: the OCI runtime applies it
    /// (audited calls to the supervisor), a microVM's `hearth-guest` installs it as BPF
    /// (audited calls answered by the guest). `None` runs without a filter.
    pub seccomp: Option<SpecSeccomp>,
    /// Network mode and allowlist; the default reaches only hearth's gateway and resolver.
    #[serde(default)]
    pub net: NetPolicy,
    /// An OCI sandbox's extra policy, which `hearth-guest` installs as BPF in every process it
    /// starts on top of the runtime's filter; `None` leaves filtering to the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_seccomp: Option<SpecSeccomp>,
    /// Which isolation technology runs it (records from before this field are OCI).
    #[serde(default)]
    pub backend: crate::backend::BackendKind,
    /// The template its root comes from; `None` is the default view (the host's `/usr` for
    /// OCI, hearth's guest image for microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SpecTemplate>,
}

/// A template as a sandbox uses it: named by the request, resolved by hearth from its template
/// store when the sandbox is created (and recorded, so the sandbox keeps exactly those layers
/// whatever the template becomes later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecTemplate {
    pub name: String,
    /// Layer directories in the store, bottom first.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// The image's env and working dir, for every command.
    #[serde(default)]
    pub exec_defaults: hearth_proto::ExecDefaults,
    /// Who the workload runs as (the image's `User`), inside the sandbox's id map.
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// A microVM's root filesystem made from the layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_rootfs: Option<PathBuf>,
}

impl SandboxSpec {
    /// Whether the OCI runtime hands this sandbox's audited calls to a listener (the
    /// supervisor's `seccomp.sock`): an OCI sandbox whose policy audits something. A microVM's
    /// guest answers its own.
    pub fn seccomp_listener(&self) -> bool {
        self.backend == crate::backend::BackendKind::Oci
            && self.seccomp.as_ref().is_some_and(SpecSeccomp::audits)
    }
}

/// A spec as stored: this version's or an older one's. Before typed policies, a microVM's
/// workload filter was its `guest_seccomp` (rendered BPF) and its `seccomp` was empty; loading
/// moves it to `seccomp`, where this version keeps a microVM's workload policy.
#[derive(Deserialize)]
struct StoredSpec {
    id: SandboxId,
    limits: ResourceLimits,
    workspace: Option<PathBuf>,
    seccomp: Option<SpecSeccomp>,
    #[serde(default)]
    net: NetPolicy,
    #[serde(default)]
    guest_seccomp: Option<SpecSeccomp>,
    #[serde(default)]
    backend: crate::backend::BackendKind,
    #[serde(default)]
    template: Option<SpecTemplate>,
}

impl From<StoredSpec> for SandboxSpec {
    fn from(stored: StoredSpec) -> Self {
        let StoredSpec {
            id,
            limits,
            workspace,
            mut seccomp,
            net,
            mut guest_seccomp,
            backend,
            template,
        } = stored;
        if backend != crate::backend::BackendKind::Oci && seccomp.is_none() {
            seccomp = guest_seccomp.take();
        }
        Self {
            id,
            limits,
            workspace,
            seccomp,
            net,
            guest_seccomp,
            backend,
            template,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_sizes() {
        assert_eq!("512M".parse::<MemoryBytes>().unwrap().0, 512 << 20);
        assert_eq!("2g".parse::<MemoryBytes>().unwrap().0, 2 << 30);
        assert_eq!("16777216".parse::<MemoryBytes>().unwrap().0, 16 << 20);
        assert_eq!("512M".parse::<MemoryBytes>().unwrap().to_string(), "512M");
        for bad in ["", "M", "12X", "-1M", "1.5G", "99999999999999999G"] {
            assert!(bad.parse::<MemoryBytes>().is_err(), "{bad}");
        }
        assert_eq!(
            "1M".parse::<MemoryBytes>(),
            Err(SpecError::MemoryTooSmall(1 << 20))
        );
    }

    #[test]
    fn parses_cpus_and_quota() {
        let half: Cpus = "0.5".parse().unwrap();
        assert_eq!(half.cfs_quota(100_000), 50_000);
        assert_eq!("2".parse::<Cpus>().unwrap().cfs_quota(100_000), 200_000);
        for bad in ["0", "-1", "abc", "5000"] {
            assert!(bad.parse::<Cpus>().is_err(), "{bad}");
        }
    }

    #[test]
    fn old_records_load_with_their_renderings() {
        use crate::backend::BackendKind;
        // Specs as hearth stored them before it kept typed policies.
        let oci: SandboxSpec = serde_json::from_str(include_str!(
            "../../hearth/tests/fixtures/old-records/sandbox-spec-oci.json"
        ))
        .unwrap();
        assert_eq!(oci.backend, BackendKind::Oci);
        assert!(matches!(oci.seccomp, Some(SpecSeccomp::Oci(_))));
        assert!(matches!(oci.guest_seccomp, Some(SpecSeccomp::Bpf(_))));
        assert!(oci.seccomp_listener());
        // A microVM's guest filter was its workload policy: it is `seccomp` now.
        let vm: SandboxSpec = serde_json::from_str(include_str!(
            "../../hearth/tests/fixtures/old-records/sandbox-spec-qemu.json"
        ))
        .unwrap();
        assert_eq!(vm.backend, BackendKind::Qemu);
        let Some(SpecSeccomp::Bpf(bytes)) = &vm.seccomp else {
            panic!("{:?}", vm.seccomp)
        };
        assert!(bytes.starts_with(b"HRTHBPF"), "{:?}", &bytes[..8]);
        assert!(vm.guest_seccomp.is_none());
        assert!(!vm.seccomp_listener());
        // And stored again, it loads the same.
        let again: SandboxSpec =
            serde_json::from_str(&serde_json::to_string(&vm).unwrap()).unwrap();
        assert_eq!(again.seccomp, vm.seccomp);
    }

    #[test]
    fn validates_pids() {
        let mut limits = ResourceLimits::default();
        assert!(limits.validate().is_ok());
        limits.pids = 1;
        assert_eq!(limits.validate(), Err(SpecError::BadPids(1)));
    }
}
