//! The seccomp policy model and its file format.
//!
//! A policy is a default action plus rules. Each rule names one system call (x86_64 name, as in
//! the `syscalls` crate), optional argument conditions that must *all* hold, and the action taken
//! when they do. A call that no rule matches gets the default action.
//!
//! Rules for the same system call with different actions must be provably exclusive (see
//! [`crate::validate`]), so a call never matches two rules that disagree: the meaning of a policy
//! does not depend on rule order, and every rendering (Firecracker, OCI, BPF) agrees on it.
//!
//! # File format
//!
//! TOML (`.toml`) or JSON (`.json`), the same fields in both; unknown fields are errors.
//!
//! ```toml
//! default_action = { errno = 1 }          # "allow" | { errno = N } | "kill_process"
//!                                          # | "kill_thread" | "log" | "trap" | "audit_deny"
//! [[rules]]
//! syscall = "read"
//! action = "allow"
//!
//! [[rules]]
//! syscall = "personality"
//! action = "allow"
//! comment = "PER_LINUX only"               # optional, kept in the Firecracker rendering
//! args = [{ index = 0, width = 32, op = "eq", value = 0 }]
//!
//! [[rules]]
//! syscall = "clone"
//! action = "audit_deny"
//! # op: "eq" | "ne" | "lt" | "le" | "gt" | "ge" | { masked_eq = MASK } (arg & MASK == value)
//! # width: 64 (default) or 32 (compare the low 32 bits only)
//! # value/mask: an integer or a string "0x..." (TOML integers stop at i64::MAX)
//! args = [{ index = 0, op = { masked_eq = "0x10000000" }, value = "0x10000000" }]
//! ```
//!
//! `audit_deny` refuses the call with `EPERM` and records it: in OCI sandboxes with a listener it
//! renders to `SCMP_ACT_NOTIFY` (hearth answers `EPERM` and logs), elsewhere to errno `EPERM`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors loading a policy file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read policy: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML policy: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: invalid JSON policy: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: unknown policy format (expected a .toml or .json extension)")]
    UnknownFormat { path: PathBuf },
}

/// What the kernel does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    /// Fail the call with this errno (at most 4095).
    Errno(u32),
    KillProcess,
    KillThread,
    /// Allow, and have the kernel log the call (`SECCOMP_RET_LOG`).
    Log,
    /// Send `SIGSYS` to the caller.
    Trap,
    /// Fail with `EPERM` and record the denial in hearth's audit (see the module docs).
    AuditDeny,
}

impl Action {
    /// The action every target except an OCI runtime with a listener applies for this one.
    pub fn without_notify(self) -> Action {
        match self {
            Action::AuditDeny => Action::Errno(EPERM),
            other => other,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => f.write_str("allow"),
            Action::Errno(n) => write!(f, "errno({n})"),
            Action::KillProcess => f.write_str("kill_process"),
            Action::KillThread => f.write_str("kill_thread"),
            Action::Log => f.write_str("log"),
            Action::Trap => f.write_str("trap"),
            Action::AuditDeny => f.write_str("audit_deny"),
        }
    }
}

/// `EPERM` as the positive errno seccomp returns.
pub const EPERM: u32 = 1;

/// How many bits of the argument a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ArgWidth {
    /// The low 32 bits (C `int`/`unsigned int` arguments; the upper half is caller-controlled).
    W32,
    #[default]
    W64,
}

impl Serialize for ArgWidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match self {
            ArgWidth::W32 => 32,
            ArgWidth::W64 => 64,
        })
    }
}

impl<'de> Deserialize<'de> for ArgWidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            32 => Ok(ArgWidth::W32),
            64 => Ok(ArgWidth::W64),
            other => Err(serde::de::Error::custom(format!(
                "width must be 32 or 64, got {other}"
            ))),
        }
    }
}

/// The comparison of a condition. `MaskedEq(mask)` holds when `arg & mask == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(#[serde(with = "flex_u64")] u64),
}

/// One condition on a system call argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCondition {
    /// Argument index, 0..=5.
    pub index: u8,
    #[serde(default)]
    pub width: ArgWidth,
    pub op: CmpOp,
    #[serde(with = "flex_u64")]
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One rule: when `syscall` is called and every condition in `args` holds, apply `action`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub syscall: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCondition>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Rule {
    /// An unconditional rule.
    pub fn new(syscall: &str, action: Action) -> Rule {
        Rule {
            syscall: syscall.to_owned(),
            args: Vec::new(),
            action,
            comment: None,
        }
    }

    /// A conditional rule.
    pub fn with_args(syscall: &str, action: Action, args: Vec<ArgCondition>) -> Rule {
        Rule {
            args,
            ..Rule::new(syscall, action)
        }
    }
}

impl ArgCondition {
    pub fn new(index: u8, width: ArgWidth, op: CmpOp, value: u64) -> ArgCondition {
        ArgCondition {
            index,
            width,
            op,
            value,
            comment: None,
        }
    }
}

/// A seccomp policy: see the module documentation for its meaning and file format.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompPolicy {
    pub default_action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl SeccompPolicy {
    /// Parses TOML text. Not validated: call [`crate::validate::validate`].
    pub fn from_toml_str(text: &str) -> Result<SeccompPolicy, toml::de::Error> {
        toml::from_str(text)
    }

    /// Parses JSON text. Not validated: call [`crate::validate::validate`].
    pub fn from_json_str(text: &str) -> Result<SeccompPolicy, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Reads a `.toml` or `.json` policy file (by extension). Not validated.
    pub fn from_path(path: &Path) -> Result<SeccompPolicy, PolicyError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        // Refuse an unknown extension before reading, so the error says what is wrong.
        if !matches!(ext, "toml" | "json") {
            return Err(PolicyError::UnknownFormat {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if ext == "toml" {
            Self::from_toml_str(&text).map_err(|source| PolicyError::Toml {
                path: path.to_owned(),
                source,
            })
        } else {
            Self::from_json_str(&text).map_err(|source| PolicyError::Json {
                path: path.to_owned(),
                source,
            })
        }
    }

    /// Whether any call under the policy is audited (`audit_deny`), so whoever enforces it
    /// needs a listener to answer and record those calls.
    pub fn audits(&self) -> bool {
        self.default_action == Action::AuditDeny
            || self.rules.iter().any(|r| r.action == Action::AuditDeny)
    }

    /// The policy as TOML text.
    pub fn to_toml_string(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The policy as pretty JSON text.
    pub fn to_json_string(&self) -> String {
        // Serializing these plain structs to a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A u64 that reads from an integer or a `"0x..."`/decimal string and writes as an integer when
/// TOML can hold it (<= i64::MAX) and as a hex string otherwise.
mod flex_u64 {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*v) {
            Ok(small) => s.serialize_i64(small),
            Err(_) => s.serialize_str(&format!("{v:#x}")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(FlexVisitor)
    }

    struct FlexVisitor;

    impl Visitor<'_> for FlexVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned integer or a string such as \"0x7e020000\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("negative value {v}")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.map_err(|_| E::custom(format!("not a 64-bit unsigned number: {v:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audits_when_any_action_is_audit_deny() {
        let mut policy = SeccompPolicy {
            default_action: Action::Allow,
            rules: vec![Rule::new("mount", Action::Errno(EPERM))],
        };
        assert!(!policy.audits());
        policy.rules.push(Rule::new("umount2", Action::AuditDeny));
        assert!(policy.audits());
        policy.rules.clear();
        policy.default_action = Action::AuditDeny;
        assert!(policy.audits());
    }

    #[test]
    fn toml_and_json_read_the_same_policy() {
        let toml_text = r#"
            default_action = { errno = 1 }
            [[rules]]
            syscall = "clone"
            action = "audit_deny"
            args = [{ index = 0, op = { masked_eq = "0x10000000" }, value = 268435456 }]
        "#;
        let json_text = r#"{"default_action":{"errno":1},"rules":[{"syscall":"clone",
            "action":"audit_deny","args":[{"index":0,"width":64,
            "op":{"masked_eq":268435456},"value":"0x10000000"}]}]}"#;
        let a = SeccompPolicy::from_toml_str(toml_text).unwrap();
        let b = SeccompPolicy::from_json_str(json_text).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rules[0].args[0].op, CmpOp::MaskedEq(0x1000_0000));
    }

    #[test]
    fn unknown_fields_and_bad_widths_are_refused() {
        let extra = r#"{"default_action":"allow","rules":[],"extra":1}"#;
        assert!(SeccompPolicy::from_json_str(extra).is_err());
        let width = r#"{"default_action":"allow","rules":[{"syscall":"read","action":"allow",
            "args":[{"index":0,"width":16,"op":"eq","value":0}]}]}"#;
        assert!(SeccompPolicy::from_json_str(width).is_err());
    }

    #[test]
    fn large_values_survive_toml() {
        let mut p = SeccompPolicy {
            default_action: Action::Allow,
            rules: vec![Rule::with_args(
                "ioctl",
                Action::Log,
                vec![ArgCondition::new(1, ArgWidth::W64, CmpOp::Eq, u64::MAX)],
            )],
        };
        p.rules[0].comment = Some("why".into());
        let text = p.to_toml_string().unwrap();
        assert_eq!(SeccompPolicy::from_toml_str(&text).unwrap(), p);
    }

    #[test]
    fn from_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "default_action = 3").unwrap();
        let err = SeccompPolicy::from_path(&path).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
        let missing = dir.path().join("missing.json");
        let err = SeccompPolicy::from_path(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");
        let err = SeccompPolicy::from_path(&dir.path().join("p.yaml")).unwrap_err();
        assert!(matches!(err, PolicyError::UnknownFormat { .. }));
    }
}
