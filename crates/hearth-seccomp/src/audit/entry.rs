//! One audit record and the vocabulary it uses.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What happened to the refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// The call failed with EPERM and the process carried on (the OCI notify answer).
    DeniedEperm,
    /// The call failed with another errno chosen by the policy.
    DeniedErrno,
    /// The whole process was killed (SIGSYS).
    KilledProcess,
    /// Only the calling thread was killed.
    KilledThread,
    /// SIGSYS was delivered to the process to handle.
    Trapped,
    /// The call was allowed but logged (the `audit` profile).
    Logged,
    /// A Firecracker VMM thread hit its own filter and the VMM shut down.
    VmmShutdown,
}

impl AuditAction {
    /// The stable name used in the store and on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeniedEperm => "denied_eperm",
            Self::DeniedErrno => "denied_errno",
            Self::KilledProcess => "killed_process",
            Self::KilledThread => "killed_thread",
            Self::Trapped => "trapped",
            Self::Logged => "logged",
            Self::VmmShutdown => "vmm_shutdown",
        }
    }
}

/// Which layer reported the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSource {
    /// A seccomp user notification handed over by an OCI runtime (`listenerPath`).
    OciNotify,
    /// `hearth-guest` inside a microVM, over its protocol.
    Guest,
    /// The Firecracker VMM's own filter (exit status 148).
    VmmFault,
}

impl AuditSource {
    /// The stable name used in the store and on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OciNotify => "oci_notify",
            Self::Guest => "guest",
            Self::VmmFault => "vmm_fault",
        }
    }
}

/// The identity of a syscall: numbers only mean something together with the architecture
/// (`AUDIT_ARCH_*`), since a 32-bit process on x86_64 uses the i386 table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SyscallKey {
    /// The `AUDIT_ARCH_*` value from `seccomp_data.arch`.
    pub arch: u32,
    /// The number from `seccomp_data.nr`.
    pub nr: i64,
}

impl SyscallKey {
    /// A syscall of the architecture hearth was built for.
    pub fn native(nr: i64) -> Self {
        Self {
            arch: native_arch(),
            nr,
        }
    }
}

// <linux/audit.h>: the ELF machine number with the 64-bit and little-endian flags. The libc crate
// does not export these.
const AUDIT_ARCH_64BIT: u32 = 0x8000_0000;
const AUDIT_ARCH_LE: u32 = 0x4000_0000;
/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 62 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE;
/// `AUDIT_ARCH_I386`: 32-bit processes on an x86_64 host.
pub const AUDIT_ARCH_I386: u32 = 3 | AUDIT_ARCH_LE;
/// `AUDIT_ARCH_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 183 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE;

/// The `AUDIT_ARCH_*` value of the architecture hearth was built for.
pub fn native_arch() -> u32 {
    #[cfg(target_arch = "x86_64")]
    return AUDIT_ARCH_X86_64;
    #[cfg(target_arch = "aarch64")]
    return AUDIT_ARCH_AARCH64;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return 0;
}

/// The syscall's name, from the `syscalls` crate's table of the native architecture. Other
/// architectures' numbers (and x32's) are not named rather than named wrongly.
pub fn syscall_name(arch: u32, nr: i64) -> Option<&'static str> {
    if arch != native_arch() {
        return None;
    }
    let nr = usize::try_from(nr).ok()?;
    syscalls::Sysno::new(nr).map(|sysno| sysno.name())
}

/// Milliseconds since the Unix epoch; a clock before 1970 reads as 0.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One refused (or logged) system call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (0 for the first record); set by the log, so `--follow` can resume.
    pub seq: u64,
    /// When hearth saw it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The caller's pid in hearth's pid namespace, when known.
    pub pid: Option<u32>,
    /// `/proc/<pid>/comm`, when it could be read before the process went away.
    pub comm: Option<String>,
    /// `/proc/<pid>/exe`, when it could be read before the process went away.
    pub exe: Option<String>,
    /// The `AUDIT_ARCH_*` value of the call.
    pub arch: u32,
    /// The syscall number.
    pub syscall_nr: i64,
    /// The syscall name, when the table knows it.
    pub syscall_name: Option<String>,
    /// The raw arguments (pointers are addresses in the caller, not dereferenced).
    pub args: [u64; 6],
    /// What was done to the call.
    pub action: AuditAction,
    /// Which layer reported it.
    pub source: AuditSource,
}

impl AuditEntry {
    /// An entry stamped now, with the name looked up; pid, comm and exe are unknown.
    pub fn new(
        arch: u32,
        syscall_nr: i64,
        args: [u64; 6],
        action: AuditAction,
        source: AuditSource,
    ) -> Self {
        Self {
            seq: 0,
            time_ms: now_unix_ms(),
            pid: None,
            comm: None,
            exe: None,
            arch,
            syscall_nr,
            syscall_name: syscall_name(arch, syscall_nr).map(str::to_owned),
            args,
            action,
            source,
        }
    }

    /// A Firecracker VMM fault: the syscall number is all its log tells.
    pub fn vmm_fault(syscall_nr: i64) -> Self {
        Self::new(
            native_arch(),
            syscall_nr,
            [0; 6],
            AuditAction::VmmShutdown,
            AuditSource::VmmFault,
        )
    }

    /// The counter key.
    pub fn key(&self) -> SyscallKey {
        SyscallKey {
            arch: self.arch,
            nr: self.syscall_nr,
        }
    }
}
