//! What a microVM guest learns from the host besides its kernel command line.
//!
//! The transport names are shared by the VM backends (which configure QEMU or Firecracker) and
//! `hearth-guest init` (which listens on them). [`VmGuestConfig`] travels on a raw virtio-blk
//! drive (`hearth.config=/dev/vdb`): one JSON document followed by NUL padding to
//! [`VM_CONFIG_SIZE`] bytes, so the drive needs no filesystem.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// AF_VSOCK port `hearth-guest` listens on (`hearth.transport=vsock:1024`).
pub const GUEST_VSOCK_PORT: u32 = 1024;

/// Name of the virtio-serial port `hearth-guest` serves HTTP/2 on
/// (`hearth.transport=virtio-serial:org.hearth.guest.0`).
pub const GUEST_SERIAL_PORT_NAME: &str = "org.hearth.guest.0";

/// Size of the config drive: the JSON document plus NUL padding. 64 KiB: the `default`
/// profile's BPF alone is about 16 KB in base64.
pub const VM_CONFIG_SIZE: usize = 64 * 1024;

/// Settings of one VM guest that do not fit on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmGuestConfig {
    /// A `hearth_proto::bpf` file, base64: the filters installed in every process the guest
    /// starts (what `--seccomp-bpf` reads in OCI sandboxes). None: processes run unfiltered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_bpf_b64: Option<String>,
    /// Environment of `hearth-guest` itself (e.g. `HEARTH_GUEST_LOG`); never passed to execs,
    /// whose environment is exactly their request's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The guest's hostname.
    pub hostname: String,
    /// Processes and threads the workload may have inside the VM (the host's cgroup limits
    /// only the VMM's threads); `None` sets no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u32>,
    /// A template's environment and working directory for every exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_defaults: Option<crate::ExecDefaults>,
}

/// A config drive that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum VmConfigError {
    #[error("the VM config is {len} bytes of JSON; the drive holds at most {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the VM config drive holds no JSON document (all NUL)")]
    Empty,
    #[error("the VM config drive's JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the VM config's seccomp_bpf_b64 is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

impl VmGuestConfig {
    /// The drive's bytes: JSON then NUL padding to exactly [`VM_CONFIG_SIZE`]. At least one NUL
    /// always follows the JSON, so a reader can tell the document ended.
    pub fn to_drive(&self) -> Result<Vec<u8>, VmConfigError> {
        let mut bytes = serde_json::to_vec(self)?;
        if bytes.len() >= VM_CONFIG_SIZE {
            return Err(VmConfigError::TooLarge {
                len: bytes.len(),
                max: VM_CONFIG_SIZE - 1,
            });
        }
        bytes.resize(VM_CONFIG_SIZE, 0);
        Ok(bytes)
    }

    /// Parses what [`to_drive`](Self::to_drive) wrote: everything before the first NUL.
    pub fn from_drive(bytes: &[u8]) -> Result<Self, VmConfigError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        if end == 0 {
            return Err(VmConfigError::Empty);
        }
        Ok(serde_json::from_slice(&bytes[..end])?)
    }

    /// Stores a `hearth_proto::bpf` file.
    pub fn set_seccomp_bpf(&mut self, file: &[u8]) {
        self.seccomp_bpf_b64 = Some(STANDARD.encode(file));
    }

    /// The `hearth_proto::bpf` file, decoded.
    pub fn seccomp_bpf(&self) -> Result<Option<Vec<u8>>, VmConfigError> {
        Ok(self
            .seccomp_bpf_b64
            .as_deref()
            .map(|text| STANDARD.decode(text))
            .transpose()?)
    }
}

/// `POST /v1/vm/quiesce` (no body): before a snapshot, the guest lets go of what a VM snapshot
/// cannot carry. QEMU refuses to migrate while a 9p share is mounted (its fids name host files),
/// so the 9p workspace is unmounted; a process still using it makes this fail with `busy`.
pub const VM_QUIESCE_PATH: &str = "/v1/vm/quiesce";
/// `POST /v1/vm/thaw` with a [`VmThaw`]: after a snapshot, or in a VM restored from one. The
/// guest mounts its workspace again and takes on the identity of the sandbox it now is.
pub const VM_THAW_PATH: &str = "/v1/vm/thaw";

/// What a guest becomes after a snapshot or a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmThaw {
    /// A restored guest still has the address of the sandbox it was saved from (its kernel
    /// command line is that sandbox's); this is the new sandbox's. None: keep eth0 as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<VmNetIdentity>,
    /// The new sandbox's hostname (its id). None: keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// eth0 of a guest: address, prefix, default gateway and resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNetIdentity {
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
    pub dns: std::net::Ipv4Addr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drive_round_trips_and_is_padded_with_nul() {
        let mut config = VmGuestConfig {
            hostname: "sbx-1".into(),
            ..VmGuestConfig::default()
        };
        config.env.insert("HEARTH_GUEST_LOG".into(), "debug".into());
        config.set_seccomp_bpf(b"HRTHBPF1\x01");
        let drive = config.to_drive().unwrap();
        assert_eq!(drive.len(), VM_CONFIG_SIZE);
        assert_eq!(*drive.last().unwrap(), 0);
        let back = VmGuestConfig::from_drive(&drive).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.seccomp_bpf().unwrap().unwrap(), b"HRTHBPF1\x01");
    }

    #[test]
    fn bad_drives_are_refused() {
        assert!(matches!(
            VmGuestConfig::from_drive(&[0; 16]),
            Err(VmConfigError::Empty)
        ));
        assert!(matches!(
            VmGuestConfig::from_drive(b"{\"hostname\":\"a\",\"x\":1}\0"),
            Err(VmConfigError::Json(_))
        ));
        let big = VmGuestConfig {
            hostname: "h".repeat(VM_CONFIG_SIZE),
            ..VmGuestConfig::default()
        };
        assert!(matches!(
            big.to_drive(),
            Err(VmConfigError::TooLarge { .. })
        ));
        let bad = VmGuestConfig {
            seccomp_bpf_b64: Some("!!".into()),
            ..VmGuestConfig::default()
        };
        assert!(bad.seccomp_bpf().is_err());
    }

    #[test]
    fn thaw_requests_round_trip_and_refuse_unknown_fields() {
        let thaw = VmThaw {
            net: Some(VmNetIdentity {
                address: "10.231.0.6".parse().unwrap(),
                prefix: 30,
                gateway: "10.231.0.5".parse().unwrap(),
                dns: "10.231.0.5".parse().unwrap(),
            }),
            hostname: Some("sbx-2".into()),
        };
        let text = serde_json::to_string(&thaw).unwrap();
        assert_eq!(serde_json::from_str::<VmThaw>(&text).unwrap(), thaw);
        assert_eq!(serde_json::to_string(&VmThaw::default()).unwrap(), "{}");
        assert!(serde_json::from_str::<VmThaw>(r#"{"hostname":"a","x":1}"#).is_err());
    }
}
