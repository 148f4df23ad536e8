//! Raw seccomp BPF for x86_64 (what `hearth-guest` installs in the processes it starts), compiled
//! with seccompiler's typed API, and the code that installs it.
//!
//! `audit_deny` becomes errno `EPERM` in [`render_bpf`]: a BPF program can't tell hearth anything
//! by itself. [`render_bpf_notify`] makes it `SECCOMP_RET_USER_NOTIF` instead, for a supervisor
//! that installs the program with a listener and answers (and records) each call itself: that is
//! how `hearth-guest` reports denials inside a microVM over its protocol.
//!
//! A seccompiler filter has one match action. When a policy needs several (say `allow` rules,
//! a `kill_process` rule and a default `errno`), it compiles to several programs that the kernel
//! runs together, taking the most severe result: one per non-allow action that returns that
//! action for its rules and `allow` otherwise, plus one that returns `allow` for any rule and the
//! default action for the rest. Because validation makes rules with different actions exclusive,
//! at most one program returns something other than `allow` for any call, so the combination
//! means exactly what the policy says. Most policies (all built-in profiles) need one program.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::policy::{Action, ArgWidth, CmpOp, Rule, SeccompPolicy};
use crate::validate::{sysno, validate, ValidationErrors};

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("seccompiler: {0}")]
    Backend(#[from] seccompiler::BackendError),
    #[error(
        "the policy audits {syscall}, which a process must still call after its filter is \
         installed to hand the audit over; allow it or deny it with an errno"
    )]
    NotifyHandoff { syscall: &'static str },
}

/// Installing filters failed; each variant is one system call.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(io::Error),
    #[error("seccomp(SECCOMP_SET_MODE_FILTER) for program {program}: {source}")]
    Seccomp { program: usize, source: io::Error },
    #[error("seccomp: thread {tid} could not be synchronized (TSYNC)")]
    ThreadSync { tid: libc::c_long },
    #[error("program {program} has {len} instructions, more than a filter can hold")]
    TooLong { program: usize, len: usize },
}

/// The compiled programs, in the order they must be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilters {
    programs: Vec<BpfProgram>,
}

/// The errno data that stands for "notify" while seccompiler builds a program (it has no
/// user-notify action). Above `MAX_ERRNO`, so no valid policy uses it; [`patch_notify`] turns
/// every `ret` of it into `SECCOMP_RET_USER_NOTIF`.
const NOTIFY_SENTINEL: u32 = 0xffff;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `SECCOMP_RET_USER_NOTIF`: the call waits until the filter's listener answers it.
pub const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;

/// How `audit_deny` is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuditMode {
    /// EPERM, unrecorded.
    Errno,
    /// A user notification for the listener to answer.
    Notify,
}

impl AuditMode {
    /// The action `a` is grouped and compiled as.
    fn normalize(self, a: Action) -> Action {
        match self {
            Self::Notify => a,
            Self::Errno => a.without_notify(),
        }
    }
}

/// The seccompiler action of an action already normalized by [`AuditMode::normalize`]: an
/// `audit_deny` still here is one to notify (it becomes the sentinel [`patch_notify`] rewrites).
fn seccomp_action(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Errno(n) => SeccompAction::Errno(n),
        Action::KillProcess => SeccompAction::KillProcess,
        Action::KillThread => SeccompAction::KillThread,
        Action::Log => SeccompAction::Log,
        Action::Trap => SeccompAction::Trap,
        Action::AuditDeny => SeccompAction::Errno(NOTIFY_SENTINEL),
    }
}

fn seccomp_rule(rule: &Rule) -> Result<Option<SeccompRule>, BpfError> {
    if rule.args.is_empty() {
        return Ok(None);
    }
    let conditions = rule
        .args
        .iter()
        .map(|c| {
            let len = match c.width {
                ArgWidth::W32 => SeccompCmpArgLen::Dword,
                ArgWidth::W64 => SeccompCmpArgLen::Qword,
            };
            let op = match c.op {
                CmpOp::Eq => SeccompCmpOp::Eq,
                CmpOp::Ne => SeccompCmpOp::Ne,
                CmpOp::Lt => SeccompCmpOp::Lt,
                CmpOp::Le => SeccompCmpOp::Le,
                CmpOp::Gt => SeccompCmpOp::Gt,
                CmpOp::Ge => SeccompCmpOp::Ge,
                CmpOp::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
            };
            SeccompCondition::new(c.index, len, op, c.value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(SeccompRule::new(conditions)?))
}

/// Builds one program from rules (already known to be valid): calls with an unconditional rule
/// match always, others when any of their rules' conditions all hold.
fn program(
    rules: &[&Rule],
    on_match: SeccompAction,
    on_mismatch: SeccompAction,
) -> Result<BpfProgram, BpfError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let nr = sysno(&rule.syscall).map_or(-1, |s| i64::from(s.id()));
        let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (seccomp_rule(rule)?, entry.as_mut()) {
            (Some(r), Some(list)) => list.push(r),
            // An empty rule list means "always": an unconditional rule wins over conditions.
            (None, _) => *entry = None,
            (Some(_), None) => {}
        }
    }
    let map = map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(map, on_mismatch, on_match, TargetArch::x86_64)?;
    Ok(BpfProgram::try_from(filter)?)
}

/// Any action other than `a`, for filters whose rule list is empty (it never fires).
fn other_than(a: &SeccompAction) -> SeccompAction {
    if *a == SeccompAction::Allow {
        SeccompAction::Errno(crate::policy::EPERM)
    } else {
        SeccompAction::Allow
    }
}

/// Compiles a policy to BPF for x86_64; `audit_deny` is EPERM.
pub fn render_bpf(policy: &SeccompPolicy) -> Result<BpfFilters, BpfError> {
    render(policy, AuditMode::Errno)
}

/// Compiles a policy to BPF for x86_64 with `audit_deny` as `SECCOMP_RET_USER_NOTIF`, for a
/// process that installs the notifying program with `SECCOMP_FILTER_FLAG_NEW_LISTENER` and
/// answers the notifications with EPERM itself.
///
/// At most one program returns the notification (the kernel allows one listener per process):
/// `audit_deny` rules form one group, and when the default is `audit_deny` those rules are
/// folded into the default program. Refused with [`BpfError::NotifyHandoff`] when the policy
/// audits a call that the installing process must still make after the filter is in place
/// (`sendmsg` to hand the listener over, `execve`): it would wait on a listener nobody reads yet.
pub fn render_bpf_notify(policy: &SeccompPolicy) -> Result<BpfFilters, BpfError> {
    for call in NOTIFY_HANDOFF_CALLS {
        let audited_rule = policy
            .rules
            .iter()
            .any(|r| r.syscall == call && r.action == Action::AuditDeny);
        if audited_rule || policy.evaluate(call, &[0; 6]) == Action::AuditDeny {
            return Err(BpfError::NotifyHandoff { syscall: call });
        }
    }
    let mut filters = render(policy, AuditMode::Notify)?;
    for program in &mut filters.programs {
        patch_notify(program);
    }
    Ok(filters)
}

/// The calls a child makes between installing a notifying filter and running its program.
const NOTIFY_HANDOFF_CALLS: [&str; 2] = ["sendmsg", "execve"];

/// Replaces each `ret ERRNO(NOTIFY_SENTINEL)` with `ret USER_NOTIF`.
fn patch_notify(program: &mut BpfProgram) {
    for insn in program.iter_mut() {
        if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_ERRNO | NOTIFY_SENTINEL {
            insn.k = SECCOMP_RET_USER_NOTIF;
        }
    }
}

/// Whether the instruction `code`/`k` returns a user notification.
pub fn is_notify_return(code: u16, k: u32) -> bool {
    code == BPF_RET_K && k == SECCOMP_RET_USER_NOTIF
}

/// Whether a raw program (as [`BpfFilters::to_raw`] writes it) can return a user notification,
/// i.e. needs a listener.
pub fn raw_program_notifies(raw: &[u8]) -> bool {
    raw.chunks_exact(8).any(|insn| {
        let code = u16::from_le_bytes([insn[0], insn[1]]);
        let k = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        is_notify_return(code, k)
    })
}

fn render(policy: &SeccompPolicy, mode: AuditMode) -> Result<BpfFilters, BpfError> {
    validate(policy)?;
    let default = mode.normalize(policy.default_action);
    let kept: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| mode.normalize(r.action) != default)
        .collect();
    let mut groups: BTreeMap<Action, Vec<&Rule>> = BTreeMap::new();
    for r in &kept {
        groups.entry(mode.normalize(r.action)).or_default().push(r);
    }
    let default_sa = seccomp_action(default);
    if groups.len() <= 1 {
        let on_match = groups
            .keys()
            .next()
            .map_or(other_than(&default_sa), |&a| seccomp_action(a));
        let programs = vec![program(&kept, on_match, default_sa)?];
        return Ok(BpfFilters { programs });
    }
    // Programs keyed by the action they deny with; `None` is the default-action program.
    let mut keyed: Vec<(Option<Action>, BpfProgram)> = Vec::new();
    for (action, rules) in groups.iter().filter(|(a, _)| **a != Action::Allow) {
        let p = program(rules, seccomp_action(*action), SeccompAction::Allow)?;
        keyed.push((Some(*action), p));
    }
    if default != Action::Allow {
        keyed.push((None, program(&kept, SeccompAction::Allow, default_sa)?));
    }
    // Installing each program after the first is itself a `seccomp` call that the programs
    // already installed filter; the one program that refuses it (if any) must come last.
    let seccomp_call = mode.normalize(policy.evaluate("seccomp", &[1, 1, 0, 0, 0, 0]));
    if seccomp_call != Action::Allow {
        let owner = (seccomp_call != default).then_some(seccomp_call);
        keyed.sort_by_key(|(k, _)| *k == owner);
    }
    Ok(BpfFilters {
        programs: keyed.into_iter().map(|(_, p)| p).collect(),
    })
}

/// One instruction as the kernel reads it: u16 code, u8 jt, u8 jf, u32 k, little-endian.
pub fn encode_instruction(insn: &sock_filter) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..2].copy_from_slice(&insn.code.to_le_bytes());
    out[2] = insn.jt;
    out[3] = insn.jf;
    out[4..].copy_from_slice(&insn.k.to_le_bytes());
    out
}

impl BpfFilters {
    /// The programs, in installation order.
    pub fn programs(&self) -> &[BpfProgram] {
        &self.programs
    }

    /// Each program as the raw `struct sock_filter` array `seccomp(2)` takes.
    pub fn to_raw(&self) -> Vec<Vec<u8>> {
        self.programs
            .iter()
            .map(|p| p.iter().flat_map(encode_instruction).collect())
            .collect()
    }

    /// Sets `no_new_privs` and installs every program with `SECCOMP_FILTER_FLAG_TSYNC`, so it
    /// covers every thread of the calling process, permanently.
    ///
    /// Allocates nothing, so it may run in a `pre_exec` hook between fork and exec (see
    /// [`BpfFilters::apply_in_pre_exec`]); compile the filters before forking.
    pub fn apply(&self) -> Result<(), ApplyError> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(ApplyError::NoNewPrivs(io::Error::last_os_error()));
        }
        for (index, program) in self.programs.iter().enumerate() {
            install(index, program)?;
        }
        Ok(())
    }

    /// [`BpfFilters::apply`] for `std::os::unix::process::CommandExt::pre_exec`: returns the
    /// OS error itself, since building any other `io::Error` would allocate after fork.
    pub fn apply_in_pre_exec(&self) -> io::Result<()> {
        self.apply().map_err(|e| match e {
            ApplyError::NoNewPrivs(source) | ApplyError::Seccomp { source, .. } => source,
            ApplyError::ThreadSync { .. } => io::Error::from_raw_os_error(libc::ESRCH),
            ApplyError::TooLong { .. } => io::Error::from_raw_os_error(libc::EINVAL),
        })
    }
}

fn install(index: usize, program: &[sock_filter]) -> Result<(), ApplyError> {
    let len = u16::try_from(program.len()).map_err(|_| ApplyError::TooLong {
        program: index,
        len: program.len(),
    })?;
    // seccompiler's `sock_filter` is `repr(C)` with the same fields as the kernel's (and libc's).
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` valid instructions that outlive the call; the kernel copies
    // the program and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    match rc {
        0 => Ok(()),
        tid if tid > 0 => Err(ApplyError::ThreadSync { tid }),
        _ => Err(ApplyError::Seccomp {
            program: index,
            source: io::Error::last_os_error(),
        }),
    }
}

impl fmt::Display for BpfFilters {
    /// One line per instruction, `index: code jt jf k`, each program under a header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.programs.len();
        for (n, program) in self.programs.iter().enumerate() {
            writeln!(
                f,
                "# program {} of {count}, {} instructions",
                n + 1,
                program.len()
            )?;
            for (i, insn) in program.iter().enumerate() {
                writeln!(
                    f,
                    "{i:4}: code={:#06x} jt={:3} jf={:3} k={:#010x}",
                    insn.code, insn.jt, insn.jf, insn.k
                )?;
            }
        }
        Ok(())
    }
}
