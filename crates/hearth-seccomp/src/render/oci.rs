//! The OCI runtime-spec `linux.seccomp` object (what runc, crun and runsc read).
//!
//! `audit_deny` renders to `SCMP_ACT_NOTIFY` when a `listenerPath` is given (hearth answers each
//! notification with `EPERM` and records it) and to `SCMP_ACT_ERRNO`/`EPERM` otherwise.
//!
//! Two things OCI can't say exactly are refused instead of approximated, because an
//! approximation would widen what an allow rule lets through:
//! - libseccomp compares whole 64-bit arguments, so a 32-bit condition is only expressible as
//!   `eq` or `masked_eq` (as `SCMP_CMP_MASKED_EQ` with the low-32-bit mask);
//! - runc turns several conditions on the *same* argument of one rule into separate rules (an
//!   OR where the policy means AND).
//!
//! It also refuses to notify on the calls runc itself makes after loading the filter (writing
//! to its sync pipe, `execve`, ...): nobody could answer them yet and the container would hang
//! or fail to start.
//!
//! One thing i386 can't say at all: a 32-bit process (or `int 0x80` from a 64-bit one) reaches
//! the socket and SysV IPC calls through `socketcall(2)`/`ipc(2)` with their arguments in memory,
//! and libseccomp turns a rule for `socket` into one for `socketcall(SYS_SOCKET)` that drops the
//! rule's conditions on the socket arguments. Allowing two families would allow every family on
//! i386, and an allow next to an `audit_deny` on `socket` fails to load (`EEXIST`). So when the
//! rendered rules condition the arguments of such a call (see [`I386_MULTIPLEXED`]), the
//! rendering lists no `SCMP_ARCH_X86`: i386 system calls then get libseccomp's bad-architecture
//! action (the thread is killed), as under the BPF rendering, which is for x86_64 alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{Action, ArgCondition, ArgWidth, CmpOp, Rule, SeccompPolicy, EPERM};
use crate::validate::{validate, ValidationErrors};

/// The architectures a rendering lists: x86_64 and the 32-bit ABIs a process could switch to
/// (i386 left out when the rules condition a call in [`I386_MULTIPLEXED`]).
pub const OCI_ARCHITECTURES: [&str; 3] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// i386's libseccomp name.
const ARCH_I386: &str = "SCMP_ARCH_X86";

/// The calls i386 also makes through `socketcall(2)` or `ipc(2)`, whose arguments a filter can't
/// see there (x86_64 names).
pub const I386_MULTIPLEXED: [&str; 30] = [
    "socket",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "socketpair",
    "sendto",
    "recvfrom",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "sendmsg",
    "recvmsg",
    "recvmmsg",
    "sendmmsg",
    "semop",
    "semget",
    "semctl",
    "semtimedop",
    "msgsnd",
    "msgrcv",
    "msgget",
    "msgctl",
    "shmat",
    "shmdt",
    "shmget",
    "shmctl",
];

/// Calls runc makes between loading the filter and `execve` of the workload.
const RUNTIME_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "close",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "futex",
    "fstat",
    "newfstatat",
    "getpid",
    "fcntl",
    "sendmsg",
    "recvmsg",
    "rt_sigprocmask",
    "mmap",
    "munmap",
];

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("rule {index} ({syscall}): a 32-bit `{op}` condition on argument {arg} can't be expressed in OCI seccomp (64-bit compares); use width 64")]
    Width32 {
        index: usize,
        syscall: String,
        arg: u8,
        op: &'static str,
    },
    #[error("rule {index} ({syscall}): two conditions on argument {arg}; runc would OR them")]
    SameArgument {
        index: usize,
        syscall: String,
        arg: u8,
    },
    #[error("{syscall}: runc needs this call after loading the filter, so it can't be audit_deny (SCMP_ACT_NOTIFY)")]
    NotifyRuntimeCall { syscall: String },
    #[error("OCI seccomp object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("action {0} is not one hearth policies use")]
    UnknownAction(String),
    #[error("comparison {0} is not one hearth policies use")]
    UnknownOp(String),
}

/// `linux.seccomp` of the runtime spec (the fields hearth uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSeccomp {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<PathBuf>,
    #[serde(default)]
    pub syscalls: Vec<OciSyscall>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSyscall {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<OciArg>,
}

/// One comparison; for `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

fn oci_action(a: Action, notify: bool) -> (&'static str, Option<u32>) {
    match a {
        Action::Allow => ("SCMP_ACT_ALLOW", None),
        Action::Errno(n) => ("SCMP_ACT_ERRNO", Some(n)),
        Action::KillProcess => ("SCMP_ACT_KILL_PROCESS", None),
        Action::KillThread => ("SCMP_ACT_KILL_THREAD", None),
        Action::Log => ("SCMP_ACT_LOG", None),
        Action::Trap => ("SCMP_ACT_TRAP", None),
        Action::AuditDeny if notify => ("SCMP_ACT_NOTIFY", None),
        Action::AuditDeny => ("SCMP_ACT_ERRNO", Some(EPERM)),
    }
}

fn parse_action(name: &str, errno: Option<u32>) -> Result<Action, OciError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        // runc's default errno is EPERM.
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(EPERM)),
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_KILL_THREAD" | "SCMP_ACT_KILL" => Action::KillThread,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_NOTIFY" => Action::AuditDeny,
        other => return Err(OciError::UnknownAction(other.to_owned())),
    })
}

fn oci_arg(index: usize, rule: &Rule, c: &ArgCondition) -> Result<OciArg, OciError> {
    let low32 = u64::from(u32::MAX);
    let (op, value, value_two) = match (c.op, c.width) {
        (CmpOp::MaskedEq(mask), _) => ("SCMP_CMP_MASKED_EQ", mask, c.value),
        (CmpOp::Eq, ArgWidth::W32) => ("SCMP_CMP_MASKED_EQ", low32, c.value),
        (op, ArgWidth::W32) => {
            return Err(OciError::Width32 {
                index,
                syscall: rule.syscall.clone(),
                arg: c.index,
                op: op_name(op),
            })
        }
        (op, ArgWidth::W64) => (op_name(op), c.value, 0),
    };
    Ok(OciArg {
        index: u32::from(c.index),
        value,
        value_two,
        op: op.to_owned(),
    })
}

fn op_name(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "SCMP_CMP_EQ",
        CmpOp::Ne => "SCMP_CMP_NE",
        CmpOp::Lt => "SCMP_CMP_LT",
        CmpOp::Le => "SCMP_CMP_LE",
        CmpOp::Gt => "SCMP_CMP_GT",
        CmpOp::Ge => "SCMP_CMP_GE",
        CmpOp::MaskedEq(_) => "SCMP_CMP_MASKED_EQ",
    }
}

fn parse_arg(a: &OciArg) -> Result<ArgCondition, OciError> {
    let op = match a.op.as_str() {
        "SCMP_CMP_EQ" => CmpOp::Eq,
        "SCMP_CMP_NE" => CmpOp::Ne,
        "SCMP_CMP_LT" => CmpOp::Lt,
        "SCMP_CMP_LE" => CmpOp::Le,
        "SCMP_CMP_GT" => CmpOp::Gt,
        "SCMP_CMP_GE" => CmpOp::Ge,
        "SCMP_CMP_MASKED_EQ" => CmpOp::MaskedEq(a.value),
        other => return Err(OciError::UnknownOp(other.to_owned())),
    };
    let value = if a.op == "SCMP_CMP_MASKED_EQ" {
        a.value_two
    } else {
        a.value
    };
    // Indexes above 5 come back as such and fail validation with the rule named.
    let index = u8::try_from(a.index).unwrap_or(u8::MAX);
    Ok(ArgCondition::new(index, ArgWidth::W64, op, value))
}

fn check_notify(policy: &SeccompPolicy) -> Result<(), OciError> {
    for &syscall in RUNTIME_SYSCALLS {
        let mut rules = policy
            .rules
            .iter()
            .filter(|r| r.syscall == syscall)
            .peekable();
        let unlisted = rules.peek().is_none();
        let notified = rules.any(|r| r.action == Action::AuditDeny);
        if notified || (unlisted && policy.default_action == Action::AuditDeny) {
            return Err(OciError::NotifyRuntimeCall {
                syscall: syscall.to_owned(),
            });
        }
    }
    Ok(())
}

fn oci_entry(index: usize, rule: &Rule, notify: bool) -> Result<OciSyscall, OciError> {
    for (i, c) in rule.args.iter().enumerate() {
        if rule.args[..i]
            .iter()
            .any(|earlier| earlier.index == c.index)
        {
            return Err(OciError::SameArgument {
                index,
                syscall: rule.syscall.clone(),
                arg: c.index,
            });
        }
    }
    let (action, errno_ret) = oci_action(rule.action, notify);
    let args = rule
        .args
        .iter()
        .map(|c| oci_arg(index, rule, c))
        .collect::<Result<_, _>>()?;
    Ok(OciSyscall {
        names: vec![rule.syscall.clone()],
        action: action.to_owned(),
        errno_ret,
        args,
    })
}

/// [`OCI_ARCHITECTURES`], without i386 when an entry conditions a call i386 multiplexes (see
/// the module docs).
fn architectures(syscalls: &[OciSyscall]) -> Vec<String> {
    let multiplexed = |s: &OciSyscall| {
        !s.args.is_empty()
            && s.names
                .iter()
                .any(|n| I386_MULTIPLEXED.contains(&n.as_str()))
    };
    let without_i386 = syscalls.iter().any(multiplexed);
    OCI_ARCHITECTURES
        .iter()
        .filter(|&&arch| !(without_i386 && arch == ARCH_I386))
        .map(|&arch| arch.to_owned())
        .collect()
}

impl OciSeccomp {
    /// Renders a policy; `listener` is the `listenerPath` socket hearth's notify handler serves.
    pub fn from_policy(policy: &SeccompPolicy, listener: Option<&Path>) -> Result<Self, OciError> {
        validate(policy)?;
        let notify = listener.is_some();
        if notify {
            check_notify(policy)?;
        }
        let (default_action, default_errno_ret) = oci_action(policy.default_action, notify);
        let mut syscalls: Vec<OciSyscall> = Vec::new();
        for (index, rule) in policy.rules.iter().enumerate() {
            if oci_action(rule.action, notify) == (default_action, default_errno_ret) {
                continue; // a no-op once validated; keeps the object small
            }
            let entry = oci_entry(index, rule, notify)?;
            // Unconditional rules with the same action share one entry, as Docker writes them.
            let shared = syscalls.iter_mut().find(|s| {
                s.args.is_empty()
                    && entry.args.is_empty()
                    && (s.action.as_str(), s.errno_ret) == (entry.action.as_str(), entry.errno_ret)
            });
            match shared {
                Some(s) if !s.names.contains(&rule.syscall) => s.names.push(rule.syscall.clone()),
                Some(_) => {}
                None => syscalls.push(entry),
            }
        }
        Ok(OciSeccomp {
            default_action: default_action.to_owned(),
            default_errno_ret,
            architectures: architectures(&syscalls),
            listener_path: listener.map(Path::to_path_buf),
            syscalls,
        })
    }

    /// The policy this object means (one rule per name), for round-trip checks and import.
    pub fn to_policy(&self) -> Result<SeccompPolicy, OciError> {
        let mut rules = Vec::new();
        for s in &self.syscalls {
            let action = parse_action(&s.action, s.errno_ret)?;
            let args: Vec<ArgCondition> = s.args.iter().map(parse_arg).collect::<Result<_, _>>()?;
            rules.extend(
                s.names
                    .iter()
                    .map(|n| Rule::with_args(n, action, args.clone())),
            );
        }
        Ok(SeccompPolicy {
            default_action: parse_action(&self.default_action, self.default_errno_ret)?,
            rules,
        })
    }
}

/// `linux.seccomp` for a policy, as JSON to drop into a runtime `config.json`.
pub fn render_oci(
    policy: &SeccompPolicy,
    listener: Option<&Path>,
) -> Result<serde_json::Value, OciError> {
    Ok(serde_json::to_value(OciSeccomp::from_policy(
        policy, listener,
    )?)?)
}
