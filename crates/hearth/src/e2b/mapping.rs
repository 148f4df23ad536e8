//! What an E2B create request means in hearth, option by option. Nothing is silently dropped:
//! an option hearth cannot honour is refused with a message naming it (the SDK raises it).

use std::collections::BTreeMap;
use std::net::IpAddr;

use hearth_sandbox::backend::BackendKind;
use serde::Deserialize;

use super::RestError;
use crate::request::{NetRequest, SandboxRequest, SeccompRequest, DEFAULT_PROFILE};

/// A sandbox lives this long unless the request says otherwise (E2B's default).
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// The longest timeout accepted (E2B's own ceiling).
pub const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// Metadata and env vars are small maps of strings; beyond this they are refused.
const MAX_MAP_BYTES: usize = 64 * 1024;

/// The template ids hearth knows until hearth has templates of its own: E2B's default `base`
/// and one per backend.
pub const TEMPLATES: &str = "base (an OCI sandbox), oci, qemu, firecracker";

/// `POST /sandboxes` and `POST /v2/sandboxes` (the SDKs mix camelCase and snake_case).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: Option<String>,
    pub timeout: Option<u64>,
    #[serde(rename = "autoPause")]
    pub auto_pause: Option<bool>,
    /// Only means something with `autoPause`, which is refused.
    #[serde(rename = "autoPauseMemory")]
    #[allow(dead_code)]
    pub auto_pause_memory: Option<bool>,
    #[serde(rename = "autoResume")]
    pub auto_resume: Option<AutoResume>,
    /// Whether envd needs an access token. hearth always issues one (the SDK then sends it).
    #[allow(dead_code)]
    pub secure: Option<bool>,
    pub allow_internet_access: Option<bool>,
    pub network: Option<Network>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "envVars", default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    pub mcp: Option<serde_json::Value>,
    pub iam: Option<serde_json::Value>,
    #[serde(rename = "volumeMounts")]
    pub volume_mounts: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    #[allow(dead_code)]
    pub allow_public_traffic: Option<bool>,
    pub allow_out: Option<Vec<String>>,
    pub deny_out: Option<Vec<String>>,
    pub mask_request_host: Option<String>,
    pub rules: Option<serde_json::Value>,
    pub dns_servers: Option<serde_json::Value>,
    pub egress_proxy: Option<serde_json::Value>,
    pub https_ports: Option<serde_json::Value>,
}

/// The E2B template id as a hearth backend.
pub fn backend_of(template: &str) -> Result<(BackendKind, Option<String>), RestError> {
    match template {
        "base" => Ok((BackendKind::Oci, None)),
        other => match other.parse::<BackendKind>() {
            Ok(kind) => Ok((kind, None)),
            // Any other id names a hearth template (`hearth template build`), on OCI.
            Err(_) if hearth_template::check_name(other).is_ok() => {
                Ok((BackendKind::Oci, Some(other.to_owned())))
            }
            Err(_) => Err(RestError::bad(format!(
                "template {other:?} is not known to hearth; it serves {TEMPLATES} and the templates of `hearth template ls`"
            ))),
        },
    }
}

fn refuse(option: &str, why: &str) -> RestError {
    RestError::bad(format!("{option} is not supported by hearth: {why}"))
}

/// The create request's timeout in seconds, defaulted and bounded.
pub fn timeout_of(raw: Option<u64>) -> Result<u64, RestError> {
    match raw.unwrap_or(DEFAULT_TIMEOUT_S) {
        0 => Err(RestError::bad("timeout must be at least 1 second")),
        s if s > MAX_TIMEOUT_S => Err(RestError::bad(format!(
            "timeout {s} s is over the {MAX_TIMEOUT_S} s maximum"
        ))),
        s => Ok(s),
    }
}

/// Checks a map of strings: its size, and env var names where `env` says so.
pub fn checked_map(
    field: &str,
    map: Option<BTreeMap<String, String>>,
    env: bool,
) -> Result<BTreeMap<String, String>, RestError> {
    let map = map.unwrap_or_default();
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_MAP_BYTES {
        return Err(RestError::bad(format!(
            "{field} is {bytes} bytes; at most {MAX_MAP_BYTES} are accepted"
        )));
    }
    if env {
        if let Some(bad) = map
            .keys()
            .find(|name| name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(RestError::bad(format!(
                "{field}: {bad:?} is not an environment variable name"
            )));
        }
        if map.values().any(|value| value.contains('\0')) {
            return Err(RestError::bad(format!(
                "{field}: a value contains a NUL byte"
            )));
        }
    }
    Ok(map)
}

impl NewSandbox {
    /// The hearth sandbox this asks for, or the first option hearth cannot honour.
    pub fn request(&self) -> Result<SandboxRequest, RestError> {
        if self.auto_pause == Some(true) {
            return Err(refuse(
                "autoPause (lifecycle on_timeout=\"pause\")",
                "a sandbox is removed when its timeout expires",
            ));
        }
        if self.auto_resume.as_ref().is_some_and(|r| r.enabled) {
            return Err(refuse(
                "autoResume (lifecycle auto_resume)",
                "connect to a paused sandbox to resume it",
            ));
        }
        if self.mcp.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(refuse("mcp", "hearth runs no MCP gateway in E2B sandboxes"));
        }
        if self.iam.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(refuse("iam", "hearth issues no cloud IAM tokens"));
        }
        if self.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(refuse(
                "volumeMounts (volume_mounts)",
                "hearth has no E2B volumes; a sandbox has its own /workspace",
            ));
        }
        let (backend, template) = backend_of(self.template_id.as_deref().unwrap_or("base"))?;
        Ok(SandboxRequest {
            id: None,
            backend,
            memory: None,
            cpus: None,
            pids: None,
            disk: None,
            workspace: None,
            seccomp: SeccompRequest::Profile(DEFAULT_PROFILE.to_owned()),
            guest_seccomp: None,
            net: self.net_request()?,
            template,
        })
    }

    /// E2B's network options on hearth's default-deny firewall:
    /// - `allow_out` lists become hearth's allowlist (only those destinations);
    /// - `allow_internet_access: false` without `allow_out` is `--net none`;
    /// - otherwise the sandbox gets hearth's default (`gateway`: its resolver and gateway, no
    ///   internet): hearth never opens the internet wholesale, so E2B's default of an open
    ///   internet becomes "list what it may reach in allow_out".
    fn net_request(&self) -> Result<NetRequest, RestError> {
        let network = self.network.as_ref();
        let empty = Network::default();
        let network = network.unwrap_or(&empty);
        // `allow_public_traffic` (which older SDKs always send as true) governs access to the
        // sandbox's ports through E2B's proxy; hearth publishes no ports this way, so there is
        // nothing for it to open or close.
        for (option, given) in [
            (
                "network.mask_request_host",
                network.mask_request_host.is_some(),
            ),
            (
                "network.rules (per-host transforms)",
                network.rules.as_ref().is_some_and(|v| !v.is_null()),
            ),
            (
                "network.dns_servers",
                network.dns_servers.as_ref().is_some_and(|v| !v.is_null()),
            ),
            (
                "network.egress_proxy",
                network.egress_proxy.as_ref().is_some_and(|v| !v.is_null()),
            ),
            (
                "network.https_ports",
                network.https_ports.as_ref().is_some_and(|v| !v.is_null()),
            ),
        ] {
            if given {
                return Err(refuse(option, "not yet served by hearth's firewall"));
            }
        }
        if let Some(entry) = network
            .deny_out
            .iter()
            .flatten()
            .find(|entry| !matches!(entry.as_str(), "0.0.0.0/0" | "::/0"))
        {
            return Err(RestError::bad(format!(
                "network.deny_out {entry:?}: hearth denies everything not in allow_out, so \
                 deny_out takes only 0.0.0.0/0; leave {entry:?} out of allow_out instead"
            )));
        }
        let allow = network.allow_out.clone().unwrap_or_default();
        let mode = if !allow.is_empty() {
            "allowlist"
        } else if self.allow_internet_access == Some(false) {
            "none"
        } else {
            "gateway"
        };
        Ok(NetRequest {
            mode: Some(mode.to_owned()),
            // An address the client names outright is meant, private or not.
            allow_private: allow.iter().any(|entry| names_private_address(entry)),
            allow,
            ..NetRequest::default()
        })
    }
}

/// Whether `entry` (`ADDR`, `ADDR/LEN` or `ADDR:PORT`) is a private (RFC 1918, CGNAT, ULA)
/// address or network.
fn names_private_address(entry: &str) -> bool {
    let host = entry.split('/').next().unwrap_or(entry);
    let addr = host.parse::<IpAddr>().ok().or_else(|| {
        host.rsplit_once(':')
            .and_then(|(addr, _port)| addr.trim_matches(['[', ']']).parse().ok())
    });
    match addr {
        Some(IpAddr::V4(v4)) => {
            v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        Some(IpAddr::V6(v6)) => (v6.segments()[0] & 0xfe00) == 0xfc00,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> NewSandbox {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn both_sdk_generations_default_bodies_map_to_a_default_sandbox() {
        // 2.40 sends every lifecycle field with its default; 2.63 sends almost nothing.
        for body in [
            r#"{"templateID":"base","timeout":300,"autoPause":false,"autoResume":{"enabled":false},
               "secure":true,"allow_internet_access":true,"metadata":{},"envVars":{}}"#,
            r#"{"templateID":"base","metadata":{},"envVars":{}}"#,
        ] {
            let req = parse(body).request().unwrap();
            assert_eq!(req.backend, BackendKind::Oci);
            assert_eq!(req.net.mode.as_deref(), Some("gateway"));
        }
    }

    #[test]
    fn network_options_map_to_the_allowlist_or_none() {
        let req = parse(r#"{"network":{"allowOut":["10.1.2.3"],"denyOut":["0.0.0.0/0"]}}"#)
            .request()
            .unwrap();
        assert_eq!(req.net.mode.as_deref(), Some("allowlist"));
        assert_eq!(req.net.allow, ["10.1.2.3"]);
        assert!(req.net.allow_private, "a private address named outright");
        let req = parse(r#"{"allow_internet_access":false}"#)
            .request()
            .unwrap();
        assert_eq!(req.net.mode.as_deref(), Some("none"));
        let req = parse(r#"{"network":{"allowOut":["pypi.org"]}}"#)
            .request()
            .unwrap();
        assert!(!req.net.allow_private);
    }

    #[test]
    fn what_hearth_cannot_honour_is_refused_by_name() {
        for (body, named) in [
            (r#"{"autoPause":true}"#, "autoPause"),
            (r#"{"autoResume":{"enabled":true}}"#, "autoResume"),
            (r#"{"mcp":{"x":{}}}"#, "mcp"),
            (r#"{"iam":{"tokens":{}}}"#, "iam"),
            (
                r#"{"volumeMounts":[{"name":"v","path":"/v"}]}"#,
                "volumeMounts",
            ),
            (r#"{"network":{"denyOut":["8.8.8.8"]}}"#, "deny_out"),
            (r#"{"network":{"rules":{"a.com":[]}}}"#, "network.rules"),
            (r#"{"templateID":"Node 22!"}"#, "Node 22!"),
        ] {
            let err = parse(body).request().unwrap_err();
            assert!(err.message.contains(named), "{body}: {}", err.message);
        }
        // Any other valid name is a hearth template, on OCI.
        let req = parse(r#"{"templateID":"node22"}"#).request().unwrap();
        assert_eq!(req.backend, BackendKind::Oci);
        assert_eq!(req.template.as_deref(), Some("node22"));
        assert!(serde_json::from_str::<NewSandbox>(r#"{"bogus":1}"#).is_err());
        assert!(timeout_of(Some(0)).is_err() && timeout_of(Some(MAX_TIMEOUT_S + 1)).is_err());
        assert_eq!(timeout_of(None).unwrap(), DEFAULT_TIMEOUT_S);
        let env = BTreeMap::from([("A=B".to_owned(), "x".to_owned())]);
        assert!(checked_map("envVars", Some(env), true).is_err());
    }
}
