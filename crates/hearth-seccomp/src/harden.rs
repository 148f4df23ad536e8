//! The rules every policy hearth applies to a workload must have, whatever profile or policy
//! file was chosen: [`harden_for_workload`] merges them into a policy.
//!
//! A workload is root inside its sandbox, and its workspace is a host directory. Without these
//! rules it could `cp /bin/sh /workspace/x && chmod 4755 /workspace/x` and leave a setuid file on
//! the host, or talk AF_VSOCK to the host or to `hearth-guest`. User namespaces close the first
//! hole elsewhere; this is defence in depth that no profile (not even `audit`, which otherwise
//! refuses nothing) and no user policy can opt out of.
//!
//! # What a hardened policy refuses
//!
//! - A mode with `S_ISUID` or `S_ISGID` in `chmod`, `fchmod`, `fchmodat` and in the calls that
//!   create files or directories: `open`, `openat`, `creat`, `mkdir`, `mkdirat`, `mknod`,
//!   `mknodat` (see [`MODE_ARGUMENTS`]). `open`'s mode only matters with `O_CREAT`/`O_TMPFILE`,
//!   but libc passes 0 otherwise, so it is refused regardless. `audit_deny`: EPERM, recorded.
//! - `socket(AF_VSOCK, ...)`: `audit_deny`.
//! - `openat2` (its mode is in a struct a filter can't read) and `fchmodat2`: errno `ENOSYS`, so
//!   libc falls back to `openat`/`fchmodat`, whose modes are checked.
//! - `io_uring_setup`, `io_uring_enter`, `io_uring_register`: `audit_deny`, because an io_uring
//!   `OPENAT` operation never passes through the filter. A policy that already refuses one of
//!   these calls (or `openat2`/`fchmodat2`) unconditionally keeps its own refusal.
//!
//! Mode-bit conditions are 32-bit masked compares (`mode_t` is 32-bit; the kernel reads 16), the
//! AF_VSOCK one a 32-bit `eq` (the family is an `int`: `40 | 1 << 32` is AF_VSOCK too).
//!
//! # How the rules are merged
//!
//! Validation requires rules for one call with different actions to be provably exclusive
//! ([`mod@crate::validate`]), so each existing rule for a guarded call is rewritten to exclude the
//! refused values, keeping its action: `mode & 0o6000 == 0` is added to it, or for `socket` it
//! is split into 32 copies that together match every family but AF_VSOCK ([`all_but_32`]: OCI
//! can't say a 32-bit `ne`). A call no rule names keeps the default action for the values not
//! refused. Rules that are already exclusive, or already `audit_deny`, stay as they are; a rule
//! that only matches refused values is dropped. A rule that conditions the guarded argument in a
//! way that overlaps the refusal is an error ([`HardenError::ConditionedArgument`]): a second
//! condition on the same argument would be OR-ed by runc, so the merge would change its meaning.
//! Hardening a hardened policy returns it unchanged.
//!
//! # Renderings
//!
//! A hardened policy renders to BPF ([`crate::render_bpf`], [`crate::render_bpf_notify`]) and to
//! OCI ([`crate::render_oci`]) like any other. When the OCI rendering conditions `socket` (it does
//! for every built-in profile), it lists no i386 ABI: i386 reaches `socket` through
//! `socketcall`, where no filter can see the family, so libseccomp can't load the AF_VSOCK
//! refusal next to allowed families (see [`crate::render::oci`]); 32-bit system calls are killed
//! instead, as under BPF. Firecracker's VMM filter takes profiles unhardened:
//! the VMM is not a workload, and a hardened policy usually needs more than one action besides
//! its default, which a seccompiler filter can't hold.

use crate::api::{load_policy, LoadError};
use crate::policy::{Action, ArgCondition, ArgWidth, CmpOp, Rule, SeccompPolicy};
use crate::validate::{as_masked, rules_disjoint, validate, ValidationErrors};

/// The setuid bit of a mode.
pub const S_ISUID: u64 = 0o4000;
/// The setgid bit of a mode.
pub const S_ISGID: u64 = 0o2000;
/// The vsock address family.
pub const AF_VSOCK: u32 = 40;
const ENOSYS: u32 = 38;

/// The calls that take a mode, with the index of the mode argument (x86_64).
pub const MODE_ARGUMENTS: [(&str, u8); 10] = [
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
    ("mkdir", 1),
    ("mkdirat", 2),
    ("mknod", 1),
    ("mknodat", 2),
];

/// Calls refused whatever their arguments, with the refusal used unless the policy already has
/// an unconditional one, and why.
const REFUSED_CALLS: [(&str, Action, &str); 5] = [
    (
        "openat2",
        Action::Errno(ENOSYS),
        "hearth: the mode is in memory a filter can't read; ENOSYS makes libc use openat",
    ),
    (
        "fchmodat2",
        Action::Errno(ENOSYS),
        "hearth: ENOSYS makes libc use fchmodat, whose mode is checked",
    ),
    (
        "io_uring_setup",
        Action::AuditDeny,
        "hearth: io_uring operations bypass argument filtering",
    ),
    (
        "io_uring_enter",
        Action::AuditDeny,
        "hearth: io_uring operations bypass argument filtering",
    ),
    (
        "io_uring_register",
        Action::AuditDeny,
        "hearth: io_uring operations bypass argument filtering",
    ),
];

const MODE_COMMENT: &str = "hearth: workloads may not set setuid/setgid bits";
const VSOCK_COMMENT: &str = "hearth: workloads may not use AF_VSOCK";

/// Why a policy can't be hardened.
#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("the policy to harden is invalid: {0}")]
    Invalid(ValidationErrors),
    #[error(
        "rule {index} ({syscall}): its condition on argument {arg} can match {what}, which every \
         workload policy refuses, and hardening can't add a second condition on that argument \
         (runc would OR them); drop the condition (hardening excludes {what} itself) or make it \
         exclude {what}"
    )]
    ConditionedArgument {
        index: usize,
        syscall: String,
        arg: u8,
        what: &'static str,
    },
    #[error("the hardened policy is invalid (a bug in the merge): {0}")]
    Merged(ValidationErrors),
}

/// Conditions on the low 32 bits of argument `index` that match, one at a time, every value but
/// `value`: the one for bit `b` matches when `b` is the highest bit in which the argument differs
/// from `value`. They exist because OCI can't say a 32-bit `ne`, and a 64-bit `ne` would let
/// `value | 1 << 32` through to a kernel that reads an `int`.
pub fn all_but_32(index: u8, value: u32) -> Vec<ArgCondition> {
    (0..32)
        .rev()
        .map(|bit| {
            let mask = u32::MAX << bit;
            let differs = (value & mask) ^ (1 << bit);
            let op = CmpOp::MaskedEq(u64::from(mask));
            ArgCondition::new(index, ArgWidth::W32, op, u64::from(differs))
        })
        .collect()
}

/// The audited denial of `socket(AF_VSOCK, ...)`.
fn vsock_denial() -> Rule {
    let family = ArgCondition::new(0, ArgWidth::W32, CmpOp::Eq, u64::from(AF_VSOCK));
    Rule {
        comment: Some(VSOCK_COMMENT.into()),
        ..Rule::with_args("socket", Action::AuditDeny, vec![family])
    }
}

/// One call with an argument whose values hearth refuses for every workload.
#[derive(Debug)]
struct Guard {
    syscall: &'static str,
    arg: u8,
    /// What is refused, for error messages.
    what: &'static str,
    /// The `audit_deny` rules (one condition on `arg` each).
    denials: Vec<Rule>,
    /// Alternatives that together match exactly the values no denial matches.
    rest: Vec<ArgCondition>,
}

fn guards() -> Vec<Guard> {
    let mut guards: Vec<Guard> = MODE_ARGUMENTS
        .iter()
        .map(|&(syscall, arg)| {
            let masked = |mask, value| ArgCondition::new(arg, ArgWidth::W32, mask, value);
            let deny = |bit| Rule {
                comment: Some(MODE_COMMENT.into()),
                ..Rule::with_args(
                    syscall,
                    Action::AuditDeny,
                    vec![masked(CmpOp::MaskedEq(bit), bit)],
                )
            };
            Guard {
                syscall,
                arg,
                what: "setuid/setgid mode bits",
                denials: vec![deny(S_ISUID), deny(S_ISGID)],
                rest: vec![masked(CmpOp::MaskedEq(S_ISUID | S_ISGID), 0)],
            }
        })
        .collect();
    guards.push(Guard {
        syscall: "socket",
        arg: 0,
        what: "AF_VSOCK",
        denials: vec![vsock_denial()],
        rest: all_but_32(0, AF_VSOCK),
    });
    guards
}

/// Whether every value satisfying `c` satisfies `d` (both masked compares on one argument).
fn implies(c: &ArgCondition, d: &ArgCondition) -> bool {
    let (Some((cm, cv)), Some((dm, dv))) = (as_masked(c), as_masked(d)) else {
        return false;
    };
    c.index == d.index && cm & dm == dm && cv & dm == dv
}

impl Guard {
    /// What rule `index` of the policy becomes beside the denials: itself, nothing, or one copy
    /// per alternative of `rest`.
    fn merge(&self, index: usize, rule: &Rule) -> Result<Vec<Rule>, HardenError> {
        let exclusive = self.denials.iter().all(|d| rules_disjoint(rule, d));
        if exclusive || rule.action == Action::AuditDeny {
            return Ok(vec![rule.clone()]);
        }
        let denied = |c: &ArgCondition| self.denials.iter().any(|d| implies(c, &d.args[0]));
        if rule.args.iter().any(denied) {
            return Ok(Vec::new()); // it matches only calls a denial refuses
        }
        if rule.args.iter().any(|c| c.index == self.arg) {
            return Err(HardenError::ConditionedArgument {
                index,
                syscall: rule.syscall.clone(),
                arg: self.arg,
                what: self.what,
            });
        }
        Ok(self
            .rest
            .iter()
            .map(|alt| {
                let mut copy = rule.clone();
                copy.args.push(alt.clone());
                copy
            })
            .collect())
    }
}

fn refuses(action: Action) -> bool {
    !matches!(action, Action::Allow | Action::Log)
}

/// The one rule a refused call keeps: the policy's own unconditional refusal if it has one.
fn refusal(policy: &SeccompPolicy, syscall: &str, action: Action, why: &str) -> Rule {
    policy
        .rules
        .iter()
        .find(|r| r.syscall == syscall && r.args.is_empty() && refuses(r.action))
        .cloned()
        .unwrap_or_else(|| Rule {
            comment: Some(why.into()),
            ..Rule::new(syscall, action)
        })
}

/// Same call, action and conditions (comments aside).
fn same_rule(a: &Rule, b: &Rule) -> bool {
    let bare = |c: &ArgCondition| ArgCondition {
        comment: None,
        ..c.clone()
    };
    a.syscall == b.syscall
        && a.action == b.action
        && a.args.iter().map(bare).eq(b.args.iter().map(bare))
}

/// `policy` with the rules every workload policy must have merged in (see the module docs).
/// Validates the policy first; the result is valid and hardening it again changes nothing.
pub fn harden_for_workload(policy: &SeccompPolicy) -> Result<SeccompPolicy, HardenError> {
    validate(policy).map_err(HardenError::Invalid)?;
    let guards = guards();
    let mut rules = Vec::with_capacity(policy.rules.len() + 64);
    let mut refused_done = [false; REFUSED_CALLS.len()];
    for (index, rule) in policy.rules.iter().enumerate() {
        if let Some(guard) = guards.iter().find(|g| g.syscall == rule.syscall) {
            rules.extend(guard.merge(index, rule)?);
        } else if let Some(n) = REFUSED_CALLS.iter().position(|c| c.0 == rule.syscall) {
            // The call's first rule becomes its refusal; the others go.
            if !std::mem::replace(&mut refused_done[n], true) {
                let (syscall, action, why) = REFUSED_CALLS[n];
                rules.push(refusal(policy, syscall, action, why));
            }
        } else {
            rules.push(rule.clone());
        }
    }
    for (&(syscall, action, why), done) in REFUSED_CALLS.iter().zip(refused_done) {
        if !done {
            rules.push(refusal(policy, syscall, action, why));
        }
    }
    for denial in guards.iter().flat_map(|g| &g.denials) {
        if !rules.iter().any(|r| same_rule(r, denial)) {
            rules.push(denial.clone());
        }
    }
    let hardened = SeccompPolicy {
        default_action: policy.default_action,
        rules,
    };
    validate(&hardened).map_err(HardenError::Merged)?;
    Ok(hardened)
}

/// [`load_policy`] followed by [`harden_for_workload`]: what every sandbox backend should apply
/// to a workload.
pub fn load_workload_policy(name_or_path: &str) -> Result<SeccompPolicy, LoadError> {
    let policy = load_policy(name_or_path)?;
    harden_for_workload(&policy).map_err(|source| LoadError::Harden {
        name: name_or_path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
