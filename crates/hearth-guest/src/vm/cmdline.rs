//! The `hearth.*` keys of the kernel command line, parsed strictly: an unknown or repeated
//! `hearth.` key, or a value that does not parse, is an error (the VM backends build this line;
//! a typo there must not boot a guest that silently ignores it). Other words (`console=`,
//! `quiet`) belong to the kernel and are skipped.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::transport::Listen;

/// A command line `hearth-guest init` cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("unknown kernel parameter {0} (known: hearth.transport, hearth.root, hearth.net, hearth.dns, hearth.config, hearth.workspace, hearth.baseline)")]
    Unknown(String),
    #[error("kernel parameter {0} is given twice")]
    Repeated(String),
    #[error("kernel parameter {key}={value}: {problem}")]
    Invalid {
        key: String,
        value: String,
        problem: &'static str,
    },
    #[error("kernel parameter hearth.transport is missing")]
    NoTransport,
}

/// eth0's address, prefix length and default gateway (`hearth.net=10.0.0.2/24,10.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// What mounts at /workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workspace {
    /// An empty tmpfs (the default).
    #[default]
    Tmpfs,
    /// The host's directory shared by QEMU as 9p tag `workspace`.
    NineP,
}

/// Everything the guest reads from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootParams {
    pub transport: Option<Listen>,
    pub root: Option<PathBuf>,
    pub net: Option<NetConfig>,
    pub dns: Option<Ipv4Addr>,
    pub config: Option<PathBuf>,
    pub workspace: Workspace,
    /// Report ready on the console and power off at once: the boot benchmark's reference.
    pub baseline: bool,
}

impl BootParams {
    /// Parses a whole command line.
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let mut params = BootParams::default();
        let mut seen: Vec<&str> = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("hearth.") else {
                continue;
            };
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if seen.contains(&key) {
                return Err(CmdlineError::Repeated(key.to_string()));
            }
            seen.push(key);
            let invalid = |problem| CmdlineError::Invalid {
                key: key.to_string(),
                value: value.to_string(),
                problem,
            };
            let name = rest.split_once('=').map_or(rest, |(name, _)| name);
            match name {
                "transport" => {
                    params.transport = Some(parse_transport(value).ok_or_else(|| {
                        invalid("expected virtio-serial:<port name> or vsock:<port>")
                    })?)
                }
                "root" => {
                    params.root =
                        Some(device(value).ok_or_else(|| invalid("expected a /dev/ path"))?)
                }
                "config" => {
                    params.config =
                        Some(device(value).ok_or_else(|| invalid("expected a /dev/ path"))?)
                }
                "net" => {
                    params.net =
                        Some(parse_net(value).ok_or_else(|| {
                            invalid("expected <ipv4>/<prefix 0-32>,<gateway ipv4>")
                        })?)
                }
                "dns" => {
                    params.dns = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("expected an IPv4 address"))?,
                    )
                }
                "workspace" => {
                    params.workspace = match value {
                        "9p" => Workspace::NineP,
                        "tmpfs" => Workspace::Tmpfs,
                        _ => return Err(invalid("expected 9p or tmpfs")),
                    }
                }
                "baseline" => {
                    params.baseline = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(invalid("expected 0 or 1")),
                    }
                }
                _ => return Err(CmdlineError::Unknown(key.to_string())),
            }
        }
        if params.transport.is_none() && !params.baseline {
            return Err(CmdlineError::NoTransport);
        }
        Ok(params)
    }
}

fn device(value: &str) -> Option<PathBuf> {
    let name = value.strip_prefix("/dev/")?;
    let ok = !name.is_empty()
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    ok.then(|| PathBuf::from(value))
}

fn parse_transport(value: &str) -> Option<Listen> {
    if let Some(name) = value.strip_prefix("virtio-serial:") {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        return ok.then(|| Listen::VirtioSerial(name.to_string()));
    }
    let port: u32 = value.strip_prefix("vsock:")?.parse().ok()?;
    Some(Listen::Vsock(port))
}

fn parse_net(value: &str) -> Option<NetConfig> {
    let (cidr, gateway) = value.split_once(',')?;
    let (address, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some(NetConfig {
        address: address.parse().ok()?,
        prefix,
        gateway: gateway.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_line_the_backends_build() {
        let line = "console=ttyS0 panic=-1 reboot=t quiet hearth.transport=virtio-serial:org.hearth.guest.0 \
                    hearth.root=/dev/vda hearth.net=10.9.0.2/24,10.9.0.1 hearth.dns=10.9.0.1 \
                    hearth.config=/dev/vdb hearth.workspace=9p\n";
        let params = BootParams::parse(line).unwrap();
        assert_eq!(
            params,
            BootParams {
                transport: Some(Listen::VirtioSerial("org.hearth.guest.0".into())),
                root: Some("/dev/vda".into()),
                net: Some(NetConfig {
                    address: Ipv4Addr::new(10, 9, 0, 2),
                    prefix: 24,
                    gateway: Ipv4Addr::new(10, 9, 0, 1),
                }),
                dns: Some(Ipv4Addr::new(10, 9, 0, 1)),
                config: Some("/dev/vdb".into()),
                workspace: Workspace::NineP,
                baseline: false,
            }
        );
        let vsock = BootParams::parse("hearth.transport=vsock:1024").unwrap();
        assert_eq!(vsock.transport, Some(Listen::Vsock(1024)));
        assert_eq!(vsock.workspace, Workspace::Tmpfs);
        assert!(
            BootParams::parse("quiet hearth.baseline=1")
                .unwrap()
                .baseline
        );
    }

    #[test]
    fn refuses_typos_repeats_and_bad_values() {
        let err = |line: &str| BootParams::parse(line).unwrap_err();
        assert_eq!(
            err("hearth.transport=vsock:1 hearth.rot=/dev/vda"),
            CmdlineError::Unknown("hearth.rot".into())
        );
        assert_eq!(
            err("hearth.transport=vsock:1 hearth.transport=vsock:2"),
            CmdlineError::Repeated("hearth.transport".into())
        );
        assert_eq!(err("console=ttyS0"), CmdlineError::NoTransport);
        for bad in [
            "hearth.transport=vsock:x",
            "hearth.transport=serial:a",
            "hearth.transport=virtio-serial:a/b",
            "hearth.transport=vsock:1 hearth.root=vda",
            "hearth.transport=vsock:1 hearth.root=/dev/../etc/passwd",
            "hearth.transport=vsock:1 hearth.net=10.0.0.2/33,10.0.0.1",
            "hearth.transport=vsock:1 hearth.net=10.0.0.2/24",
            "hearth.transport=vsock:1 hearth.dns=example.com",
            "hearth.transport=vsock:1 hearth.workspace=nfs",
            "hearth.transport",
        ] {
            assert!(
                matches!(BootParams::parse(bad), Err(CmdlineError::Invalid { .. })),
                "{bad}: {:?}",
                BootParams::parse(bad)
            );
        }
    }
}
