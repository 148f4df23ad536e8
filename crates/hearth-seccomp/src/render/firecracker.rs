//! Firecracker's seccompiler JSON, its BPF, and the binary file `--seccomp-filter` takes.
//!
//! A seccompiler filter has a single `filter_action` for all its rules. A policy is rendered by
//! first mapping `audit_deny` to errno `EPERM` (a VMM can't notify hearth) and dropping rules
//! whose action equals the default (validation makes them no-ops); if the remaining rules still
//! need more than one action the rendering is refused with [`FirecrackerError::MixedActions`]
//! rather than split into filters Firecracker could not load (it installs one per thread).
//!
//! seccompiler ignores an unconditional entry for a call that also has conditional entries, so
//! rendering keeps only the unconditional one (same meaning), and parsing drops the
//! unconditional one (the meaning seccompiler gives the file).

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{BpfProgram, TargetArch};
use serde::{Deserialize, Serialize};

use crate::policy::{Action, ArgCondition, ArgWidth, CmpOp, Rule, SeccompPolicy, EPERM};
use crate::validate::{validate, ValidationErrors};

/// The thread categories Firecracker loads filters for.
pub const FIRECRACKER_THREADS: [&str; 3] = ["vmm", "api", "vcpu"];

#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    #[error("invalid Firecracker filter JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("thread {thread}: action `trace` has no equivalent in hearth policies")]
    Trace { thread: String },
    #[error("thread {thread}: a Firecracker filter applies one action to all its rules, but this policy needs {actions:?} besides the default; write the policy so every rule that differs from the default has the same action")]
    MixedActions {
        thread: String,
        actions: Vec<Action>,
    },
    #[error("thread {thread}: {source}")]
    Invalid {
        thread: String,
        source: ValidationErrors,
    },
    #[error("seccompiler: {0}")]
    Compile(#[from] seccompiler::Error),
}

/// Per-thread policies, the model of a Firecracker filter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerFilters {
    pub threads: BTreeMap<String, SeccompPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FcAction {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Log,
    Trace(u32),
    Trap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FcOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FcArgLen {
    Dword,
    Qword,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcCondition {
    index: u8,
    #[serde(rename = "type")]
    arg_len: FcArgLen,
    op: FcOp,
    val: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcRule {
    syscall: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Vec<FcCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcFilter {
    default_action: FcAction,
    filter_action: FcAction,
    filter: Vec<FcRule>,
}

fn to_fc_action(a: Action) -> FcAction {
    match a.without_notify() {
        Action::Allow => FcAction::Allow,
        Action::Errno(n) => FcAction::Errno(n),
        Action::KillProcess => FcAction::KillProcess,
        Action::KillThread => FcAction::KillThread,
        Action::Log => FcAction::Log,
        Action::Trap => FcAction::Trap,
        Action::AuditDeny => FcAction::Errno(EPERM),
    }
}

fn from_fc_action(a: FcAction, thread: &str) -> Result<Action, FirecrackerError> {
    Ok(match a {
        FcAction::Allow => Action::Allow,
        FcAction::Errno(n) => Action::Errno(n),
        FcAction::KillThread => Action::KillThread,
        FcAction::KillProcess => Action::KillProcess,
        FcAction::Log => Action::Log,
        FcAction::Trap => Action::Trap,
        FcAction::Trace(_) => {
            return Err(FirecrackerError::Trace {
                thread: thread.to_owned(),
            })
        }
    })
}

fn to_fc_condition(c: &ArgCondition) -> FcCondition {
    let op = match c.op {
        CmpOp::Eq => FcOp::Eq,
        CmpOp::Ne => FcOp::Ne,
        CmpOp::Lt => FcOp::Lt,
        CmpOp::Le => FcOp::Le,
        CmpOp::Gt => FcOp::Gt,
        CmpOp::Ge => FcOp::Ge,
        CmpOp::MaskedEq(m) => FcOp::MaskedEq(m),
    };
    let arg_len = match c.width {
        ArgWidth::W32 => FcArgLen::Dword,
        ArgWidth::W64 => FcArgLen::Qword,
    };
    FcCondition {
        index: c.index,
        arg_len,
        op,
        val: c.value,
        comment: c.comment.clone(),
    }
}

fn from_fc_condition(c: FcCondition) -> ArgCondition {
    let op = match c.op {
        FcOp::Eq => CmpOp::Eq,
        FcOp::Ne => CmpOp::Ne,
        FcOp::Lt => CmpOp::Lt,
        FcOp::Le => CmpOp::Le,
        FcOp::Gt => CmpOp::Gt,
        FcOp::Ge => CmpOp::Ge,
        FcOp::MaskedEq(m) => CmpOp::MaskedEq(m),
    };
    let width = match c.arg_len {
        FcArgLen::Dword => ArgWidth::W32,
        FcArgLen::Qword => ArgWidth::W64,
    };
    ArgCondition {
        index: c.index,
        width,
        op,
        value: c.val,
        comment: c.comment,
    }
}

fn render_thread(thread: &str, policy: &SeccompPolicy) -> Result<FcFilter, FirecrackerError> {
    validate(policy).map_err(|source| FirecrackerError::Invalid {
        thread: thread.to_owned(),
        source,
    })?;
    let default_action = to_fc_action(policy.default_action);
    let kept: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| to_fc_action(r.action) != default_action)
        .collect();
    let actions: BTreeSet<Action> = kept.iter().map(|r| r.action.without_notify()).collect();
    if actions.len() > 1 {
        return Err(FirecrackerError::MixedActions {
            thread: thread.to_owned(),
            actions: actions.into_iter().collect(),
        });
    }
    // With no rules any action other than the default will do: it never fires.
    let filter_action = match actions.first() {
        Some(&a) => to_fc_action(a),
        None if default_action == FcAction::Allow => FcAction::Errno(EPERM),
        None => FcAction::Allow,
    };
    let unconditional: BTreeSet<&str> = kept
        .iter()
        .filter(|r| r.args.is_empty())
        .map(|r| r.syscall.as_str())
        .collect();
    let filter = kept
        .into_iter()
        .filter(|r| r.args.is_empty() || !unconditional.contains(r.syscall.as_str()))
        .map(|r| FcRule {
            syscall: r.syscall.clone(),
            args: (!r.args.is_empty()).then(|| r.args.iter().map(to_fc_condition).collect()),
            comment: r.comment.clone(),
        })
        .collect();
    Ok(FcFilter {
        default_action,
        filter_action,
        filter,
    })
}

fn parse_thread(thread: &str, filter: FcFilter) -> Result<SeccompPolicy, FirecrackerError> {
    let action = from_fc_action(filter.filter_action, thread)?;
    let conditional: BTreeSet<String> = filter
        .filter
        .iter()
        .filter(|r| r.args.is_some())
        .map(|r| r.syscall.clone())
        .collect();
    let rules = filter
        .filter
        .into_iter()
        .filter(|r| r.args.is_some() || !conditional.contains(&r.syscall))
        .map(|r| Rule {
            syscall: r.syscall,
            args: r
                .args
                .unwrap_or_default()
                .into_iter()
                .map(from_fc_condition)
                .collect(),
            action,
            comment: r.comment,
        })
        .collect();
    let policy = SeccompPolicy {
        default_action: from_fc_action(filter.default_action, thread)?,
        rules,
    };
    validate(&policy).map_err(|source| FirecrackerError::Invalid {
        thread: thread.to_owned(),
        source,
    })?;
    Ok(policy)
}

impl FirecrackerFilters {
    /// The same policy for every Firecracker thread.
    pub fn uniform(policy: &SeccompPolicy) -> FirecrackerFilters {
        let threads = FIRECRACKER_THREADS
            .iter()
            .map(|t| ((*t).to_owned(), policy.clone()))
            .collect();
        FirecrackerFilters { threads }
    }

    /// Reads a seccompiler JSON file (such as Firecracker's own filters) into per-thread policies.
    pub fn from_json_str(text: &str) -> Result<FirecrackerFilters, FirecrackerError> {
        let raw: BTreeMap<String, FcFilter> = serde_json::from_str(text)?;
        let threads = raw
            .into_iter()
            .map(|(thread, f)| parse_thread(&thread, f).map(|p| (thread, p)))
            .collect::<Result<_, _>>()?;
        Ok(FirecrackerFilters { threads })
    }

    /// Renders seccompiler JSON (pretty, thread keys sorted, rule order kept).
    pub fn to_json(&self) -> Result<String, FirecrackerError> {
        let raw = self
            .threads
            .iter()
            .map(|(thread, p)| render_thread(thread, p).map(|f| (thread.clone(), f)))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(serde_json::to_string_pretty(&raw)?)
    }

    /// Renders and compiles to one BPF program per thread.
    pub fn compile(&self) -> Result<BTreeMap<String, BpfProgram>, FirecrackerError> {
        compile_firecracker_json(&self.to_json()?)
    }
}

/// Firecracker JSON for one policy applied to the `vmm`, `api` and `vcpu` threads.
pub fn render_firecracker(policy: &SeccompPolicy) -> Result<String, FirecrackerError> {
    FirecrackerFilters::uniform(policy).to_json()
}

/// Compiles seccompiler JSON for x86_64 with the `seccompiler` crate.
pub fn compile_firecracker_json(
    json: &str,
) -> Result<BTreeMap<String, BpfProgram>, FirecrackerError> {
    let map = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64)?;
    Ok(map.into_iter().collect())
}

/// The file Firecracker reads with `--seccomp-filter`.
///
/// seccompiler 0.5 does not expose a serializer for it, so this writes the layout Firecracker
/// deserializes: bincode with fixed-width little-endian integers of a `HashMap<String,
/// Vec<sock_filter>>`, i.e. a u64 entry count, then per thread a u64 name length, the name's
/// bytes, a u64 instruction count and 8 bytes per instruction (u16 code, u8 jt, u8 jf, u32 k).
/// Threads are written in sorted order so the file is deterministic.
pub fn encode_firecracker_bpf(map: &BTreeMap<String, BpfProgram>) -> Vec<u8> {
    let mut out = Vec::new();
    let len64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX).to_le_bytes();
    out.extend_from_slice(&len64(map.len()));
    for (thread, program) in map {
        out.extend_from_slice(&len64(thread.len()));
        out.extend_from_slice(thread.as_bytes());
        out.extend_from_slice(&len64(program.len()));
        for insn in program {
            out.extend_from_slice(&crate::render::bpf::encode_instruction(insn));
        }
    }
    out
}
