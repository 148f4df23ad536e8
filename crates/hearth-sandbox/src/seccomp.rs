//! The seccomp policies a [`SandboxSpec`](crate::spec::SandboxSpec) carries, and the renderings
//! the backends make of them: the OCI runtime's `linux.seccomp` section (with the supervisor's
//! socket as `listenerPath` when the policy audits), and the BPF file `hearth-guest` installs
//! (plain for an extra filter in a container, with user notifications for a microVM's workload).
//!
//! A spec holds the policy already hardened for a workload
//! ([`hearth_seccomp::load_workload_policy`], at the request boundary); the backends only
//! render it. Records written before specs carried typed policies hold what was rendered for
//! them then: an OCI section in `seccomp`, a BPF file in `guest_seccomp` (for a microVM, its
//! workload filter). They still load, as [`SpecSeccomp::Oci`] and [`SpecSeccomp::Bpf`], and
//! render to exactly what they hold, so old sandboxes can be listed and removed and old
//! snapshots restored with the filter their guest was given.

use std::path::{Path, PathBuf};

use hearth_seccomp::SeccompPolicy;
use serde::{Deserialize, Deserializer, Serialize};

/// A seccomp policy in a spec: typed, or as an older record holds it, rendered.
///
/// Serialized as the policy itself (an object with `default_action`), or as the old record held
/// it (an OCI object with `defaultAction`, a byte array), so old rows round-trip unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SpecSeccomp {
    /// The workload policy, hardened.
    Policy(SeccompPolicy),
    /// A `hearth_proto::bpf` file rendered by an older hearth (its `guest_seccomp`).
    Bpf(Vec<u8>),
    /// A runtime-spec `linux.seccomp` section rendered by an older hearth (its `seccomp`).
    Oci(serde_json::Value),
}

/// A spec's seccomp that can't be rendered for the backend asking.
#[derive(Debug, thiserror::Error)]
pub enum SeccompRenderError {
    #[error("seccomp policy does not render for an OCI runtime: {0}")]
    Oci(#[from] hearth_seccomp::OciError),
    #[error("seccomp policy does not render as BPF: {0}")]
    Bpf(#[from] hearth_seccomp::BpfError),
    #[error("cannot encode the guest's seccomp file: {0}")]
    Encode(#[from] hearth_proto::bpf::BpfFileError),
    #[error(
        "the stored seccomp section names listener {given}, not the sandbox's socket {expected}"
    )]
    ListenerPath { given: PathBuf, expected: PathBuf },
    #[error("the stored seccomp is {have}, but this backend needs {want}")]
    WrongForm {
        have: &'static str,
        want: &'static str,
    },
}

impl SpecSeccomp {
    /// Whether an OCI runtime applying this hands audited calls to a listener.
    ///
    /// A rendered BPF file never does: `hearth-guest` installs it and answers its own
    /// notifications.
    pub fn audits(&self) -> bool {
        match self {
            Self::Policy(policy) => policy.audits(),
            Self::Oci(section) => section.get("listenerPath").is_some(),
            Self::Bpf(_) => false,
        }
    }

    /// The OCI `linux.seccomp` section, with `listener` as `listenerPath` when the policy
    /// audits (`audit_deny` becomes `SCMP_ACT_NOTIFY`, answered by the sandbox's supervisor).
    pub fn oci_section(&self, listener: &Path) -> Result<serde_json::Value, SeccompRenderError> {
        match self {
            Self::Policy(policy) => Ok(hearth_seccomp::render_oci(
                policy,
                policy.audits().then_some(listener),
            )?),
            Self::Oci(section) => {
                let given = section.get("listenerPath").and_then(|p| p.as_str());
                match given {
                    Some(given) if Path::new(given) != listener => {
                        Err(SeccompRenderError::ListenerPath {
                            given: given.into(),
                            expected: listener.to_owned(),
                        })
                    }
                    _ => Ok(section.clone()),
                }
            }
            Self::Bpf(_) => Err(self.wrong_form("an OCI seccomp section")),
        }
    }

    /// The `hearth-guest --seccomp-bpf` file of an extra filter in a container, whose runtime
    /// already audits: `audit_deny` is plain `EPERM`.
    pub fn guest_bpf(&self) -> Result<Vec<u8>, SeccompRenderError> {
        self.bpf_with(hearth_seccomp::render_bpf)
    }

    /// The workload filter of a microVM, installed by its `hearth-guest`: `audit_deny` as user
    /// notifications the guest answers and records, so the denials reach the sandbox's audit.
    pub fn vm_guest_bpf(&self) -> Result<Vec<u8>, SeccompRenderError> {
        self.bpf_with(hearth_seccomp::render_bpf_notify)
    }

    fn bpf_with(
        &self,
        render: fn(&SeccompPolicy) -> Result<hearth_seccomp::BpfFilters, hearth_seccomp::BpfError>,
    ) -> Result<Vec<u8>, SeccompRenderError> {
        match self {
            Self::Policy(policy) => Ok(hearth_proto::bpf::encode(&render(policy)?.to_raw())?),
            Self::Bpf(bytes) => Ok(bytes.clone()),
            Self::Oci(_) => Err(self.wrong_form("a BPF program")),
        }
    }

    fn wrong_form(&self, want: &'static str) -> SeccompRenderError {
        let have = match self {
            Self::Policy(_) => "a policy",
            Self::Bpf(_) => "a BPF program",
            Self::Oci(_) => "an OCI seccomp section",
        };
        SeccompRenderError::WrongForm { have, want }
    }
}

impl From<SeccompPolicy> for SpecSeccomp {
    fn from(policy: SeccompPolicy) -> Self {
        Self::Policy(policy)
    }
}

/// By shape rather than untagged trial, so a damaged policy fails naming its problem instead
/// of loading as something else: `default_action` is a policy, `defaultAction` an OCI section,
/// an array a BPF file.
impl<'de> Deserialize<'de> for SpecSeccomp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(d)?;
        if value.get("default_action").is_some() {
            return SeccompPolicy::deserialize(value)
                .map(Self::Policy)
                .map_err(D::Error::custom);
        }
        if value.get("defaultAction").is_some() {
            return Ok(Self::Oci(value));
        }
        if value.is_array() {
            return Vec::<u8>::deserialize(value)
                .map(Self::Bpf)
                .map_err(D::Error::custom);
        }
        Err(D::Error::custom(
            "a seccomp policy (default_action), an OCI seccomp section (defaultAction) or a BPF file (bytes)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str) -> SeccompPolicy {
        hearth_seccomp::load_workload_policy(name).unwrap()
    }

    #[test]
    fn each_form_round_trips_as_itself() {
        let forms = [
            SpecSeccomp::Policy(policy("default")),
            SpecSeccomp::Bpf(vec![1, 2, 3]),
            SpecSeccomp::Oci(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"})),
        ];
        for form in forms {
            let json = serde_json::to_string(&form).unwrap();
            assert_eq!(serde_json::from_str::<SpecSeccomp>(&json).unwrap(), form);
        }
        assert_eq!(
            serde_json::to_string(&SpecSeccomp::Bpf(vec![1, 2])).unwrap(),
            "[1,2]"
        );
    }

    #[test]
    fn a_damaged_policy_is_an_error_not_another_form() {
        let err = serde_json::from_str::<SpecSeccomp>(r#"{"default_action": "allw"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("allw"), "{err}");
        assert!(serde_json::from_str::<SpecSeccomp>(r#"{"x": 1}"#).is_err());
        assert!(serde_json::from_str::<SpecSeccomp>("[256]").is_err());
    }

    #[test]
    fn the_listener_is_named_only_when_the_policy_audits() {
        let listener = Path::new("/run/hearth/s/seccomp.sock");
        let audit = SpecSeccomp::Policy(policy("default"));
        assert!(audit.audits());
        let section = audit.oci_section(listener).unwrap();
        assert_eq!(section["listenerPath"], listener.to_str().unwrap());
        let quiet = SpecSeccomp::Policy(SeccompPolicy {
            default_action: hearth_seccomp::Action::Errno(1),
            rules: vec![hearth_seccomp::Rule::new(
                "read",
                hearth_seccomp::Action::Allow,
            )],
        });
        assert!(!quiet.audits());
        assert!(quiet
            .oci_section(listener)
            .unwrap()
            .get("listenerPath")
            .is_none());
    }

    #[test]
    fn old_renderings_render_as_they_were() {
        let listener = Path::new("/run/hearth/s/seccomp.sock");
        let section =
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": listener});
        let old = SpecSeccomp::Oci(section.clone());
        assert!(old.audits());
        assert_eq!(old.oci_section(listener).unwrap(), section);
        assert!(matches!(
            old.oci_section(Path::new("/elsewhere.sock")),
            Err(SeccompRenderError::ListenerPath { .. })
        ));
        assert!(old.guest_bpf().is_err());
        let bpf = SpecSeccomp::Bpf(vec![9, 8, 7]);
        assert!(!bpf.audits());
        assert_eq!(bpf.vm_guest_bpf().unwrap(), vec![9, 8, 7]);
        assert!(bpf.oci_section(listener).is_err());
    }

    #[test]
    fn a_policy_renders_the_same_bpf_files_as_before() {
        // What `hearth seccomp render --target bpf` and the old spec builders wrote.
        let strict = policy("strict");
        let plain =
            hearth_proto::bpf::encode(&hearth_seccomp::render_bpf(&strict).unwrap().to_raw())
                .unwrap();
        let notify = hearth_proto::bpf::encode(
            &hearth_seccomp::render_bpf_notify(&strict).unwrap().to_raw(),
        )
        .unwrap();
        let form = SpecSeccomp::Policy(strict);
        assert_eq!(form.guest_bpf().unwrap(), plain);
        assert_eq!(form.vm_guest_bpf().unwrap(), notify);
    }
}
