//! What a user may ask for when creating a sandbox, validated once into a [`SandboxSpec`].
//!
//! The CLI's flags, the API's body, a task's parameters and the benchmarks all come through
//! [`SandboxRequest::validate`], so every front end accepts and refuses the same things: one
//! set of limits rules, one workspace rule, one seccomp choice per backend, one network-policy
//! builder. A [`RequestError`] is always the requester's to fix (exit 3, HTTP 4xx).

use std::path::{Path, PathBuf};

use hearth_net::{AllowRule, NetMode, NetPolicy, PolicyError, Rate};
use hearth_sandbox::backend::BackendKind;
use hearth_sandbox::seccomp::{SeccompRenderError, SpecSeccomp};
use hearth_sandbox::spec::{Cpus, MemoryBytes, ResourceLimits, SandboxSpec, SpecError};
use hearth_sandbox::{IdError, SandboxId};

/// The seccomp profile everyone gets unless they ask for another.
pub const DEFAULT_PROFILE: &str = "default";

/// A sandbox as asked for, before any checking. `Default` is a plain OCI sandbox with the
/// default limits, profile and network.
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    /// Random when absent.
    pub id: Option<String>,
    pub backend: BackendKind,
    pub memory: Option<MemoryBytes>,
    pub cpus: Option<Cpus>,
    pub pids: Option<u32>,
    pub disk: Option<MemoryBytes>,
    /// An absolute host directory for `/workspace` (front ends resolve relative ones where
    /// that has a meaning, like the CLI's current directory).
    pub workspace: Option<PathBuf>,
    pub seccomp: SeccompRequest,
    /// An OCI sandbox's extra policy, installed by `hearth-guest`; a microVM's workload policy
    /// instead of `seccomp` (its guest is what filters).
    pub guest_seccomp: Option<String>,
    pub net: NetRequest,
    /// A template's name (`hearth template ls`); its layers are found when the sandbox is
    /// created. `None`: the default view.
    pub template: Option<String>,
}

/// Which seccomp policy a sandbox runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompRequest {
    /// A built-in profile (`default`, `strict`, `audit`) or a `.toml`/`.json` policy file.
    Profile(String),
    /// No filter at all: for benchmarks that measure hearth against a bare runtime; no front
    /// end offers it.
    Unfiltered,
}

impl Default for SeccompRequest {
    fn default() -> Self {
        Self::Profile(DEFAULT_PROFILE.to_owned())
    }
}

/// The network a sandbox asks for, as the user wrote it.
#[derive(Debug, Clone, Default)]
pub struct NetRequest {
    /// `none`, `gateway` or `allowlist`; absent: `allowlist` with `allow` rules, else `gateway`.
    pub mode: Option<String>,
    /// CIDR[:port] or domain[:port]; only with the `allowlist` mode.
    pub allow: Vec<String>,
    pub allow_private: bool,
    pub publish: Vec<u16>,
    /// A bandwidth limit such as `10mbit`.
    pub rate: Option<String>,
}

/// A request that can't be granted as asked: always bad input.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("bad sandbox id {raw:?}: {source}")]
    Id { raw: String, source: IdError },
    #[error(transparent)]
    Limits(#[from] SpecError),
    #[error("workspace {} is not an absolute path", .path.display())]
    WorkspaceRelative { path: PathBuf },
    #[error("workspace {}: {source}", .path.display())]
    Workspace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workspace {} is not a directory", .path.display())]
    WorkspaceNotDir { path: PathBuf },
    #[error("{} policy {name}: {source}", field_label(.field))]
    SeccompLoad {
        field: &'static str,
        name: String,
        source: Box<hearth_seccomp::LoadError>,
    },
    #[error("{} policy {name}: {source}", field_label(.field))]
    SeccompRender {
        field: &'static str,
        name: String,
        source: Box<SeccompRenderError>,
    },
    #[error(transparent)]
    Net(#[from] PolicyError),
    #[error("{0}")]
    Template(String),
}

fn field_label(field: &str) -> &'static str {
    if field == "guest_seccomp" {
        "guest seccomp"
    } else {
        "seccomp"
    }
}

impl RequestError {
    /// The request field at fault, as the API names it (the CLI's flag is `--` and dashes).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Id { .. } => "id",
            Self::Limits(SpecError::BadMemory(_) | SpecError::MemoryTooSmall(_)) => "memory",
            Self::Limits(SpecError::BadCpus(_)) => "cpus",
            Self::Limits(SpecError::BadPids(_)) => "pids",
            Self::WorkspaceRelative { .. }
            | Self::Workspace { .. }
            | Self::WorkspaceNotDir { .. } => "workspace",
            Self::SeccompLoad { field, .. } | Self::SeccompRender { field, .. } => field,
            Self::Template(_) => "template",
            Self::Net(PolicyError::BadMode(_)) => "net",
            Self::Net(PolicyError::BadRate { .. }) => "net_rate",
            Self::Net(PolicyError::PublishZero) => "publish",
            Self::Net(_) => "allow",
        }
    }
}

impl SandboxRequest {
    /// Checks everything and builds the spec: the id, the limits, the workspace (canonical,
    /// so the sandbox mounts exactly what was checked), the seccomp policies (loaded, hardened
    /// for a workload, and rendered once to be sure the backend can), and the network policy.
    pub fn validate(&self) -> Result<SandboxSpec, RequestError> {
        let id = match &self.id {
            Some(raw) => SandboxId::parse(raw).map_err(|source| RequestError::Id {
                raw: raw.clone(),
                source,
            })?,
            None => SandboxId::generate(),
        };
        let defaults = ResourceLimits::default();
        let limits = ResourceLimits {
            memory: self.memory.unwrap_or(defaults.memory),
            cpus: self.cpus.unwrap_or(defaults.cpus),
            pids: self.pids.unwrap_or(defaults.pids),
            disk: self.disk.unwrap_or(defaults.disk),
        };
        limits.validate()?;
        let workspace = self.workspace.as_deref().map(workspace_dir).transpose()?;
        let (seccomp, guest_seccomp) = self.seccomp_policies()?;
        Ok(SandboxSpec {
            id,
            limits,
            workspace,
            seccomp,
            net: self.net.policy()?,
            guest_seccomp,
            backend: self.backend,
            template: self
                .template
                .as_deref()
                .map(|name| {
                    hearth_template::check_name(name)
                        .map_err(|err| RequestError::Template(err.to_string()))?;
                    Ok::<_, RequestError>(hearth_sandbox::spec::SpecTemplate {
                        name: name.to_owned(),
                        ..Default::default()
                    })
                })
                .transpose()?,
        })
    }

    /// A container is filtered by its runtime (audited calls through the supervisor), with an
    /// optional extra filter its hearth-guest installs; a microVM's processes by its
    /// hearth-guest alone, under `--guest-seccomp` if given, else `--seccomp`.
    fn seccomp_policies(&self) -> Result<(Option<SpecSeccomp>, Option<SpecSeccomp>), RequestError> {
        let profile = match &self.seccomp {
            SeccompRequest::Profile(name) => Some(name.as_str()),
            SeccompRequest::Unfiltered => None,
        };
        if !self.backend.is_vm() {
            let seccomp = profile
                .map(|name| {
                    load("seccomp", name, |p| {
                        // The listener only changes the audited calls' action.
                        p.oci_section(Path::new("/")).map(drop)
                    })
                })
                .transpose()?;
            let guest = self
                .guest_seccomp
                .as_deref()
                .map(|name| load("guest_seccomp", name, |p| p.guest_bpf().map(drop)))
                .transpose()?;
            return Ok((seccomp, guest));
        }
        let chosen = match (&self.guest_seccomp, profile) {
            (Some(name), _) => Some(("guest_seccomp", name.as_str())),
            (None, Some(name)) => Some(("seccomp", name)),
            (None, None) => None,
        };
        let seccomp = chosen
            .map(|(field, name)| load(field, name, |p| p.vm_guest_bpf().map(drop)))
            .transpose()?;
        Ok((seccomp, None))
    }
}

/// A workload policy by profile name or file, hardened, checked to render with `render`.
fn load(
    field: &'static str,
    name: &str,
    render: impl Fn(&SpecSeccomp) -> Result<(), SeccompRenderError>,
) -> Result<SpecSeccomp, RequestError> {
    // Boxed: a policy's errors are large and rare.
    let policy =
        hearth_seccomp::load_workload_policy(name).map_err(|source| RequestError::SeccompLoad {
            field,
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    let policy = SpecSeccomp::Policy(policy);
    render(&policy).map_err(|source| RequestError::SeccompRender {
        field,
        name: name.to_owned(),
        source: Box::new(source),
    })?;
    Ok(policy)
}

impl NetRequest {
    /// The one network-policy builder: `--allow` means the allowlist mode, and only it.
    pub fn policy(&self) -> Result<NetPolicy, PolicyError> {
        let mode = match &self.mode {
            Some(raw) => raw.parse::<NetMode>()?,
            None if self.allow.is_empty() => NetMode::Gateway,
            None => NetMode::Allowlist,
        };
        let mut policy = NetPolicy::new(mode);
        policy.allow = self
            .allow
            .iter()
            .map(|raw| AllowRule::parse(raw))
            .collect::<Result<_, _>>()?;
        policy.allow_private = self.allow_private;
        policy.publish.clone_from(&self.publish);
        policy.rate = self.rate.as_deref().map(Rate::parse).transpose()?;
        policy.validate()?;
        Ok(policy)
    }
}

/// An existing absolute directory, canonical.
fn workspace_dir(raw: &Path) -> Result<PathBuf, RequestError> {
    if !raw.is_absolute() {
        return Err(RequestError::WorkspaceRelative {
            path: raw.to_owned(),
        });
    }
    let dir = raw
        .canonicalize()
        .map_err(|source| RequestError::Workspace {
            path: raw.to_owned(),
            source,
        })?;
    if !dir.is_dir() {
        return Err(RequestError::WorkspaceNotDir {
            path: raw.to_owned(),
        });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_net(mode: Option<&str>, allow: &[&str]) -> SandboxRequest {
        SandboxRequest {
            net: NetRequest {
                mode: mode.map(str::to_owned),
                allow: allow.iter().map(|s| (*s).to_owned()).collect(),
                ..NetRequest::default()
            },
            ..SandboxRequest::default()
        }
    }

    #[test]
    fn the_default_request_is_an_oci_sandbox_under_the_default_profile() {
        let spec = SandboxRequest::default().validate().unwrap();
        assert_eq!(spec.backend, BackendKind::Oci);
        assert_eq!(spec.limits, ResourceLimits::default());
        assert_eq!(spec.net.mode, NetMode::Gateway);
        let Some(SpecSeccomp::Policy(policy)) = &spec.seccomp else {
            panic!("{:?}", spec.seccomp)
        };
        assert_eq!(
            *policy,
            hearth_seccomp::load_workload_policy(DEFAULT_PROFILE).unwrap()
        );
        assert!(spec.guest_seccomp.is_none());
        assert!(spec.seccomp_listener());
    }

    #[test]
    fn allow_rules_need_the_allowlist_mode() {
        let spec = with_net(None, &["10.0.0.0/8:443"]).validate().unwrap();
        assert_eq!(spec.net.mode, NetMode::Allowlist);
        assert_eq!(spec.net.allow.len(), 1);
        for mode in ["gateway", "none"] {
            let err = with_net(Some(mode), &["10.0.0.0/8"])
                .validate()
                .unwrap_err();
            assert!(matches!(
                err,
                RequestError::Net(PolicyError::AllowWithoutAllowlist { .. })
            ));
            assert_eq!(err.field(), "allow");
        }
        let err = with_net(None, &["2001:db8::/32"]).validate().unwrap_err();
        assert_eq!(err.field(), "allow", "{err}");
        assert_eq!(
            with_net(Some("bogus"), &[]).validate().unwrap_err().field(),
            "net"
        );
    }

    #[test]
    fn a_microvm_runs_its_guest_policy_or_else_the_runtime_one() {
        let vm = |seccomp: &str, guest: Option<&str>| SandboxRequest {
            backend: BackendKind::Qemu,
            seccomp: SeccompRequest::Profile(seccomp.to_owned()),
            guest_seccomp: guest.map(str::to_owned),
            ..SandboxRequest::default()
        };
        let strict = SpecSeccomp::Policy(hearth_seccomp::load_workload_policy("strict").unwrap());
        let spec = vm("strict", None).validate().unwrap();
        assert_eq!(spec.seccomp.as_ref(), Some(&strict));
        assert!(spec.guest_seccomp.is_none());
        assert!(!spec.seccomp_listener(), "a VM's guest answers its own");
        let spec = vm("default", Some("strict")).validate().unwrap();
        assert_eq!(spec.seccomp.as_ref(), Some(&strict));
        let err = vm("default", Some("/no/such.toml")).validate().unwrap_err();
        assert_eq!(err.field(), "guest_seccomp");
        assert!(
            err.to_string()
                .starts_with("guest seccomp policy /no/such.toml: "),
            "{err}"
        );
        // A container keeps both: the runtime's and the extra one.
        let oci = SandboxRequest {
            guest_seccomp: Some("strict".to_owned()),
            ..SandboxRequest::default()
        };
        assert_eq!(oci.validate().unwrap().guest_seccomp, Some(strict));
    }

    #[test]
    fn each_bad_field_is_named_in_one_line() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let cases = [
            (
                SandboxRequest {
                    id: Some("Bad_Id".into()),
                    ..SandboxRequest::default()
                },
                "id",
            ),
            (
                SandboxRequest {
                    pids: Some(1),
                    ..SandboxRequest::default()
                },
                "pids",
            ),
            (
                SandboxRequest {
                    workspace: Some("rel/dir".into()),
                    ..SandboxRequest::default()
                },
                "workspace",
            ),
            (
                SandboxRequest {
                    workspace: Some("/no/such/dir".into()),
                    ..SandboxRequest::default()
                },
                "workspace",
            ),
            (
                SandboxRequest {
                    workspace: Some(file.path().to_owned()),
                    ..SandboxRequest::default()
                },
                "workspace",
            ),
            (
                SandboxRequest {
                    seccomp: SeccompRequest::Profile("/no/such.toml".into()),
                    ..SandboxRequest::default()
                },
                "seccomp",
            ),
            (
                SandboxRequest {
                    net: NetRequest {
                        rate: Some("fast".into()),
                        ..NetRequest::default()
                    },
                    ..SandboxRequest::default()
                },
                "net_rate",
            ),
        ];
        for (request, field) in cases {
            let err = request.validate().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn unfiltered_is_no_policy_on_any_backend() {
        for backend in [BackendKind::Oci, BackendKind::Qemu] {
            let spec = SandboxRequest {
                backend,
                seccomp: SeccompRequest::Unfiltered,
                ..SandboxRequest::default()
            }
            .validate()
            .unwrap();
            assert!(spec.seccomp.is_none() && spec.guest_seccomp.is_none());
        }
    }
}
