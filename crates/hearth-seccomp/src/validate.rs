//! Validation of a policy against x86_64, and the canonical form used to compare policies.
//!
//! Rules for one system call with *different* actions must be provably exclusive: some pair of
//! their conditions on the same argument can never hold together (for example `eq 0` and `eq 8`,
//! or `masked_eq(0x10000000) == 0` and `masked_eq(0x10000000) == 0x10000000`). That rejects an
//! unconditional rule next to conditional rules with another action for the same call: its
//! meaning would depend on rule order or action precedence, and libseccomp, seccompiler and the
//! kernel each resolve such overlaps differently. Write the exception with exclusive conditions.
//! Overlapping rules with the *same* action are fine.

use std::str::FromStr;

use syscalls::x86_64::Sysno;

use crate::policy::{Action, ArgCondition, ArgWidth, CmpOp, Rule, SeccompPolicy};

/// The largest errno the kernel passes back (`MAX_ERRNO`).
pub const MAX_ERRNO: u32 = 4095;

/// A problem in one rule (or the default action); the message names the rule by index and call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("rule {index} ({syscall}): unknown system call for x86_64")]
    UnknownSyscall { index: usize, syscall: String },
    #[error("rule {index} ({syscall}): argument index {arg} is above 5")]
    ArgIndex {
        index: usize,
        syscall: String,
        arg: u8,
    },
    #[error("rule {index} ({syscall}): 32-bit condition on argument {arg} with value {value:#x} above u32::MAX")]
    Value32 {
        index: usize,
        syscall: String,
        arg: u8,
        value: u64,
    },
    #[error("rule {index} ({syscall}): errno {errno} is above {MAX_ERRNO}")]
    RuleErrno {
        index: usize,
        syscall: String,
        errno: u32,
    },
    #[error("default action: errno {errno} is above {MAX_ERRNO}")]
    DefaultErrno { errno: u32 },
    #[error("rules {first} and {second} ({syscall}): same conditions, different actions ({first_action} vs {second_action})")]
    Contradiction {
        first: usize,
        second: usize,
        syscall: String,
        first_action: Action,
        second_action: Action,
    },
    #[error("rules {first} and {second} ({syscall}): different actions ({first_action} vs {second_action}) but their conditions can match the same call; make them exclusive")]
    Overlap {
        first: usize,
        second: usize,
        syscall: String,
        first_action: Action,
        second_action: Action,
    },
}

/// Every problem [`validate`] found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ValidationErrors(pub Vec<ValidationError>);

/// Looks up an x86_64 system call by name in the `syscalls` crate's table.
pub fn sysno(name: &str) -> Option<Sysno> {
    Sysno::from_str(name).ok()
}

/// Every x86_64 system call name hearth knows, in number order.
pub fn syscall_names() -> impl Iterator<Item = &'static str> {
    Sysno::iter().map(|s| s.name())
}

/// Checks a policy; returns every problem found, in rule order.
pub fn validate(policy: &SeccompPolicy) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    if let Action::Errno(errno) = policy.default_action {
        if errno > MAX_ERRNO {
            errors.push(ValidationError::DefaultErrno { errno });
        }
    }
    for (index, rule) in policy.rules.iter().enumerate() {
        check_rule(index, rule, &mut errors);
    }
    check_conflicts(policy, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

fn check_rule(index: usize, rule: &Rule, errors: &mut Vec<ValidationError>) {
    let syscall = || rule.syscall.clone();
    if sysno(&rule.syscall).is_none() {
        errors.push(ValidationError::UnknownSyscall {
            index,
            syscall: syscall(),
        });
    }
    if let Action::Errno(errno) = rule.action {
        if errno > MAX_ERRNO {
            errors.push(ValidationError::RuleErrno {
                index,
                syscall: syscall(),
                errno,
            });
        }
    }
    for cond in &rule.args {
        if cond.index > 5 {
            errors.push(ValidationError::ArgIndex {
                index,
                syscall: syscall(),
                arg: cond.index,
            });
        }
        let mask = match cond.op {
            CmpOp::MaskedEq(mask) => mask,
            _ => 0,
        };
        let too_wide = cond.value.max(mask) > u64::from(u32::MAX);
        if cond.width == ArgWidth::W32 && too_wide {
            errors.push(ValidationError::Value32 {
                index,
                syscall: syscall(),
                arg: cond.index,
                value: cond.value.max(mask),
            });
        }
    }
}

fn check_conflicts(policy: &SeccompPolicy, errors: &mut Vec<ValidationError>) {
    let rules = &policy.rules;
    for (i, a) in rules.iter().enumerate() {
        for (j, b) in rules.iter().enumerate().skip(i + 1) {
            if a.syscall != b.syscall || a.action == b.action || rules_disjoint(a, b) {
                continue;
            }
            let (syscall, first_action, second_action) = (a.syscall.clone(), a.action, b.action);
            errors.push(if same_conditions(a, b) {
                ValidationError::Contradiction {
                    first: i,
                    second: j,
                    syscall,
                    first_action,
                    second_action,
                }
            } else {
                ValidationError::Overlap {
                    first: i,
                    second: j,
                    syscall,
                    first_action,
                    second_action,
                }
            });
        }
    }
}

fn same_conditions(a: &Rule, b: &Rule) -> bool {
    let key = |r: &Rule| {
        let mut c: Vec<_> = r.args.iter().map(semantic_cond).collect();
        c.sort();
        c.dedup();
        c
    };
    key(a) == key(b)
}

/// True when no call can satisfy both rules (a sufficient test, not a complete one).
pub fn rules_disjoint(a: &Rule, b: &Rule) -> bool {
    a.args.iter().any(|ca| {
        b.args
            .iter()
            .any(|cb| ca.index == cb.index && conditions_disjoint(ca, cb))
    })
}

/// The condition as `arg & mask == value` over 64 bits, when it has that shape.
pub(crate) fn as_masked(c: &ArgCondition) -> Option<(u64, u64)> {
    match (c.op, c.width) {
        (CmpOp::MaskedEq(mask), _) => Some((mask, c.value)),
        (CmpOp::Eq, ArgWidth::W32) => Some((u64::from(u32::MAX), c.value)),
        (CmpOp::Eq, ArgWidth::W64) => Some((u64::MAX, c.value)),
        _ => None,
    }
}

/// The condition as an inclusive range of the compared value, when it has that shape.
fn as_range(c: &ArgCondition) -> Option<(u64, u64)> {
    let max = match c.width {
        ArgWidth::W32 => u64::from(u32::MAX),
        ArgWidth::W64 => u64::MAX,
    };
    let v = c.value;
    match c.op {
        CmpOp::Eq => Some((v, v)),
        CmpOp::Lt => v.checked_sub(1).map(|hi| (0, hi)),
        CmpOp::Le => Some((0, v)),
        CmpOp::Gt => v.checked_add(1).map(|lo| (lo, max)),
        CmpOp::Ge => Some((v, max)),
        CmpOp::Ne | CmpOp::MaskedEq(_) => None,
    }
}

fn conditions_disjoint(a: &ArgCondition, b: &ArgCondition) -> bool {
    if let (Some((ma, va)), Some((mb, vb))) = (as_masked(a), as_masked(b)) {
        let sat_a = va & ma == va;
        let sat_b = vb & mb == vb;
        return !(sat_a && sat_b && va & mb == vb & ma);
    }
    if a.width != b.width {
        return false;
    }
    if let (Some((la, ha)), Some((lb, hb))) = (as_range(a), as_range(b)) {
        return ha < lb || hb < la;
    }
    let eq_ne = |x: &ArgCondition, y: &ArgCondition| {
        x.op == CmpOp::Eq && y.op == CmpOp::Ne && x.value == y.value
    };
    eq_ne(a, b) || eq_ne(b, a)
}

/// A condition with the comment dropped and equivalent spellings made equal: a masked compare
/// over 64 bits whose mask fits 32 bits is the same as the 32-bit one, and a 64-bit masked
/// compare with mask `0xffffffff` is a 32-bit `eq`.
fn semantic_cond(c: &ArgCondition) -> ArgCondition {
    let mut out = ArgCondition {
        comment: None,
        ..c.clone()
    };
    if let CmpOp::MaskedEq(mask) = c.op {
        out.width = ArgWidth::W64;
        if mask == u64::from(u32::MAX) && c.value <= u64::from(u32::MAX) {
            out.width = ArgWidth::W32;
            out.op = CmpOp::Eq;
        } else if mask == u64::MAX {
            out.op = CmpOp::Eq;
        }
    }
    out
}

impl SeccompPolicy {
    /// The canonical form of a valid policy, for comparing policies by meaning: comments dropped,
    /// conditions canonical and sorted, rules that repeat the default action removed (validation
    /// makes them no-ops), conditional rules covered by an unconditional rule with the same
    /// action removed, duplicates removed, rules sorted.
    pub fn normalize(&self) -> SeccompPolicy {
        let mut rules: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| r.action != self.default_action)
            .map(|r| {
                let mut args: Vec<_> = r.args.iter().map(semantic_cond).collect();
                args.sort();
                args.dedup();
                Rule {
                    syscall: r.syscall.clone(),
                    args,
                    action: r.action,
                    comment: None,
                }
            })
            .collect();
        let covered = |r: &Rule, all: &[Rule]| {
            !r.args.is_empty()
                && all
                    .iter()
                    .any(|o| o.args.is_empty() && o.syscall == r.syscall && o.action == r.action)
        };
        let snapshot = rules.clone();
        rules.retain(|r| !covered(r, &snapshot));
        rules.sort_by(|a, b| (&a.syscall, a.action, &a.args).cmp(&(&b.syscall, b.action, &b.args)));
        rules.dedup();
        SeccompPolicy {
            default_action: self.default_action,
            rules,
        }
    }

    /// The action this policy gives a call, for a validated policy. 32-bit conditions look at
    /// the low half of the argument, as the BPF renderings do.
    pub fn evaluate(&self, syscall: &str, args: &[u64; 6]) -> Action {
        self.rules
            .iter()
            .find(|r| r.syscall == syscall && r.args.iter().all(|c| holds(c, args)))
            .map_or(self.default_action, |r| r.action)
    }
}

fn holds(c: &ArgCondition, args: &[u64; 6]) -> bool {
    let Some(&raw) = args.get(usize::from(c.index)) else {
        return false;
    };
    let arg = match c.width {
        ArgWidth::W32 => raw & u64::from(u32::MAX),
        ArgWidth::W64 => raw,
    };
    match c.op {
        CmpOp::Eq => arg == c.value,
        CmpOp::Ne => arg != c.value,
        CmpOp::Lt => arg < c.value,
        CmpOp::Le => arg <= c.value,
        CmpOp::Gt => arg > c.value,
        CmpOp::Ge => arg >= c.value,
        CmpOp::MaskedEq(mask) => arg & mask == c.value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::EPERM;

    fn cond(index: u8, op: CmpOp, value: u64) -> ArgCondition {
        ArgCondition::new(index, ArgWidth::W64, op, value)
    }

    fn policy(rules: Vec<Rule>) -> SeccompPolicy {
        SeccompPolicy {
            default_action: Action::Errno(EPERM),
            rules,
        }
    }

    #[test]
    fn errors_name_the_rule() {
        let mut bad = Rule::with_args("read", Action::Allow, vec![cond(6, CmpOp::Eq, 0)]);
        bad.args
            .push(ArgCondition::new(0, ArgWidth::W32, CmpOp::Eq, 1 << 40));
        let p = policy(vec![
            Rule::new("write", Action::Allow),
            Rule::new("not_a_syscall", Action::Allow),
            bad,
            Rule::new("open", Action::Errno(5000)),
        ]);
        let errs = validate(&p).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 4, "{text:?}");
        assert!(
            text[0].starts_with("rule 1 (not_a_syscall): unknown"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("rule 2 (read): argument index 6"),
            "{text:?}"
        );
        assert!(text[2].starts_with("rule 2 (read): 32-bit"), "{text:?}");
        assert!(text[3].starts_with("rule 3 (open): errno 5000"), "{text:?}");
    }

    #[test]
    fn contradictions_and_overlaps_are_refused() {
        let same = policy(vec![
            Rule::with_args("ioctl", Action::Allow, vec![cond(1, CmpOp::Eq, 7)]),
            Rule::with_args("ioctl", Action::KillProcess, vec![cond(1, CmpOp::Eq, 7)]),
        ]);
        let errs = validate(&same).unwrap_err().0;
        assert!(matches!(
            errs[..],
            [ValidationError::Contradiction {
                first: 0,
                second: 1,
                ..
            }]
        ));
        let overlap = policy(vec![
            Rule::new("clone", Action::Allow),
            Rule::with_args("clone", Action::AuditDeny, vec![cond(0, CmpOp::Gt, 7)]),
        ]);
        let errs = validate(&overlap).unwrap_err().0;
        assert!(matches!(errs[..], [ValidationError::Overlap { .. }]));
    }

    #[test]
    fn exclusive_conditions_are_accepted() {
        let ns = 0x1000_0000;
        let p = policy(vec![
            Rule::with_args(
                "clone",
                Action::Allow,
                vec![cond(0, CmpOp::MaskedEq(ns), 0)],
            ),
            Rule::with_args(
                "clone",
                Action::AuditDeny,
                vec![cond(0, CmpOp::MaskedEq(ns), ns)],
            ),
            Rule::with_args("ioctl", Action::Allow, vec![cond(1, CmpOp::Lt, 10)]),
            Rule::with_args("ioctl", Action::Trap, vec![cond(1, CmpOp::Ge, 10)]),
            Rule::with_args("kill", Action::Allow, vec![cond(1, CmpOp::Eq, 0)]),
            Rule::with_args("kill", Action::Log, vec![cond(1, CmpOp::Ne, 0)]),
        ]);
        validate(&p).unwrap();
        assert_eq!(
            p.evaluate("clone", &[ns | 1, 0, 0, 0, 0, 0]),
            Action::AuditDeny
        );
        assert_eq!(p.evaluate("clone", &[1, 0, 0, 0, 0, 0]), Action::Allow);
        assert_eq!(p.evaluate("kill", &[1, 9, 0, 0, 0, 0]), Action::Log);
        assert_eq!(p.evaluate("getpid", &[0; 6]), Action::Errno(EPERM));
    }

    #[test]
    fn normalize_drops_noops_and_canonicalizes() {
        let p = policy(vec![
            Rule::new("read", Action::Allow),
            Rule::with_args("read", Action::Allow, vec![cond(0, CmpOp::Eq, 1)]),
            Rule::new("mount", Action::Errno(EPERM)),
            Rule::with_args(
                "ioctl",
                Action::Allow,
                vec![cond(1, CmpOp::MaskedEq(0xffff_ffff), 3)],
            ),
        ]);
        let n = p.normalize();
        assert_eq!(n.rules.len(), 2);
        assert_eq!(n.rules[0].syscall, "ioctl");
        assert_eq!(
            n.rules[0].args[0],
            ArgCondition::new(1, ArgWidth::W32, CmpOp::Eq, 3)
        );
        assert_eq!(n, n.normalize());
    }
}
