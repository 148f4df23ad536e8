//! What hearth tells Firecracker before `InstanceStart`: the kernel command line, the config
//! drive, and the ordered list of API calls (the boot plan).
//!
//! The command line and the config drive follow the VM contract shared with the QEMU backend and
//! `hearth-guest`: `hearth.transport=vsock:1024`, `hearth.root=/dev/vda` (the read-only rootfs,
//! attached first so it is `vda`), `hearth.config=/dev/vdb` (one JSON document, NUL-padded),
//! optional `hearth.net=` and `hearth.dns=`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::api::{
    ApiCall, ApiRequest, BootSource, Drive, LogLevel, Logger, MachineConfig, MemoryBackend,
    MemoryBackendType, Metrics, NetworkInterface, SnapshotLoad, Vsock, VsockOverride,
};
use super::layout::{self, VmLayout};
use super::vsock::GUEST_VSOCK_PORT;
use crate::spec::ResourceLimits;

/// Block size the config drive is padded to.
pub const CONFIG_BLOCK: usize = 4096;
/// The guest's vsock context id (any value from 3 up; each VM has its own device).
pub const GUEST_CID: u32 = 3;
/// The tap device inside the sandbox's netns (made by `net::tap`, fixed per the contract).
pub const TAP_NAME: &str = "tap0";
/// Firecracker accepts 1 to 32 vCPUs.
const MAX_VCPUS: u8 = 32;

/// The guest's address on the sandbox link (the contract's `GuestNet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
}

/// The guest image files, as the host names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmImage {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub rootfs: PathBuf,
}

/// The config drive's document (`hearth_proto::VmGuestConfig` in the contract; this mirror
/// serializes to the same JSON until the guest side's type lands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfigDoc {
    pub seccomp_bpf_b64: Option<String>,
    pub env: BTreeMap<String, String>,
    pub hostname: String,
}

impl GuestConfigDoc {
    pub fn new(hostname: &str, guest_seccomp: Option<&[u8]>) -> Self {
        Self {
            seccomp_bpf_b64: guest_seccomp
                .map(|bpf| base64::engine::general_purpose::STANDARD.encode(bpf)),
            env: BTreeMap::new(),
            hostname: hostname.to_owned(),
        }
    }

    /// The drive's bytes: the JSON, then NULs up to the next multiple of [`CONFIG_BLOCK`]
    /// (so a large seccomp program still fits; the guest reads up to the first NUL).
    pub fn to_image(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec(self)?;
        let blocks = bytes.len() / CONFIG_BLOCK + 1;
        bytes.resize(blocks * CONFIG_BLOCK, 0);
        Ok(bytes)
    }
}

/// The kernel command line for a Firecracker guest.
pub fn kernel_cmdline(net: Option<&VmNet>) -> String {
    // pci=off: Firecracker has only MMIO devices, so skip the PCI probe at boot.
    let mut line = format!(
        "console=ttyS0 panic=-1 reboot=t quiet pci=off hearth.transport=vsock:{GUEST_VSOCK_PORT} \
         hearth.root=/dev/vda hearth.config=/dev/vdb"
    );
    if let Some(net) = net {
        line.push_str(&format!(
            " hearth.net={}/{},{} hearth.dns={}",
            net.address, net.prefix, net.gateway, net.dns
        ));
    }
    line
}

/// A stable, locally administered MAC for the guest: `06:00` and the IPv4 address, so a MAC
/// seen in a capture tells which sandbox it is.
pub fn guest_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("06:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Everything configured before `InstanceStart`, in the order it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub logger: Logger,
    pub metrics: Metrics,
    pub machine: MachineConfig,
    pub boot_source: BootSource,
    /// Root first: Firecracker names drives in attach order (`vda`, `vdb`).
    pub drives: Vec<Drive>,
    pub network: Option<NetworkInterface>,
    pub vsock: Vsock,
}

impl BootPlan {
    /// The plan for a VM whose image files Firecracker finds at `image` (already in its view).
    pub fn new(
        layout: &VmLayout,
        image: &VmImage,
        limits: &ResourceLimits,
        net: Option<&VmNet>,
    ) -> Self {
        Self {
            logger: Logger {
                log_path: layout.vmm(layout::FIRECRACKER_LOG),
                level: LogLevel::Warning,
                show_level: true,
                show_log_origin: false,
            },
            metrics: Metrics {
                metrics_path: layout.vmm(layout::METRICS),
            },
            machine: MachineConfig {
                vcpu_count: vcpus(limits),
                mem_size_mib: limits.memory.0 / (1024 * 1024),
                smt: false,
                track_dirty_pages: false,
            },
            boot_source: BootSource {
                kernel_image_path: image.kernel.clone(),
                initrd_path: image.initrd.clone(),
                boot_args: kernel_cmdline(net),
            },
            drives: vec![
                Drive {
                    drive_id: "rootfs".to_owned(),
                    path_on_host: image.rootfs.clone(),
                    is_root_device: false,
                    is_read_only: true,
                },
                Drive {
                    drive_id: "config".to_owned(),
                    path_on_host: layout.vmm(layout::CONFIG_IMAGE),
                    is_root_device: false,
                    is_read_only: true,
                },
            ],
            network: net.map(|net| NetworkInterface {
                iface_id: "eth0".to_owned(),
                host_dev_name: TAP_NAME.to_owned(),
                guest_mac: Some(guest_mac(net.address)),
            }),
            vsock: Vsock {
                guest_cid: GUEST_CID,
                uds_path: layout.vmm(layout::VSOCK_SOCKET),
            },
        }
    }

    /// The API calls, in order (without `InstanceStart`).
    pub fn calls(&self) -> Result<Vec<ApiCall>, serde_json::Error> {
        let mut calls = vec![
            self.logger.call()?,
            self.metrics.call()?,
            self.machine.call()?,
            self.boot_source.call()?,
        ];
        for drive in &self.drives {
            calls.push(drive.call()?);
        }
        if let Some(network) = &self.network {
            calls.push(network.call()?);
        }
        calls.push(self.vsock.call()?);
        Ok(calls)
    }
}

/// The calls that restore a snapshot on a fresh VMM: logger and metrics (the only resources
/// Firecracker lets be configured before a load), then the load itself, resumed at once, with
/// the vsock socket moved to this VM's place. `state` and `memory` are in the VMM's view.
pub fn restore_calls(
    layout: &VmLayout,
    state: &Path,
    memory: &Path,
) -> Result<Vec<ApiCall>, serde_json::Error> {
    let logger = Logger {
        log_path: layout.vmm(layout::FIRECRACKER_LOG),
        level: LogLevel::Warning,
        show_level: true,
        show_log_origin: false,
    };
    let metrics = Metrics {
        metrics_path: layout.vmm(layout::METRICS),
    };
    let load = SnapshotLoad {
        snapshot_path: state.to_owned(),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: memory.to_owned(),
        },
        resume_vm: true,
        vsock_override: Some(VsockOverride {
            uds_path: layout.vmm(layout::VSOCK_SOCKET),
        }),
    };
    Ok(vec![logger.call()?, metrics.call()?, load.call()?])
}

/// Whole vCPUs covering the CPU allowance (0.5 CPUs is one vCPU), within Firecracker's range.
fn vcpus(limits: &ResourceLimits) -> u8 {
    let wanted = limits.cpus.0.ceil().clamp(1.0, f64::from(MAX_VCPUS));
    // Clamped to 1..=32 just above, so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count = wanted as u8;
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Cpus, MemoryBytes};
    use std::path::Path;

    fn net() -> VmNet {
        VmNet {
            address: Ipv4Addr::new(10, 200, 0, 2),
            prefix: 30,
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            dns: Ipv4Addr::new(10, 200, 0, 1),
        }
    }

    #[test]
    fn cmdline_carries_the_contract_keys() {
        let line = kernel_cmdline(Some(&net()));
        for key in [
            "console=ttyS0",
            "panic=-1",
            "reboot=t",
            "hearth.transport=vsock:1024",
            "hearth.root=/dev/vda",
            "hearth.config=/dev/vdb",
            "hearth.net=10.200.0.2/30,10.200.0.1",
            "hearth.dns=10.200.0.1",
        ] {
            assert!(line.split(' ').any(|w| w == key), "{key} missing: {line}");
        }
        assert!(!kernel_cmdline(None).contains("hearth.net"));
    }

    #[test]
    fn config_image_is_json_then_nul_padding() {
        let doc = GuestConfigDoc::new("sb-1", Some(&[1, 2, 3]));
        let image = doc.to_image().unwrap();
        assert_eq!(image.len(), CONFIG_BLOCK);
        let end = image.iter().position(|&b| b == 0).unwrap();
        assert!(image[end..].iter().all(|&b| b == 0));
        let back: GuestConfigDoc = serde_json::from_slice(&image[..end]).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.seccomp_bpf_b64.as_deref(), Some("AQID"));

        let big = GuestConfigDoc::new("sb-1", Some(&[7; 5000]));
        // 5000 bytes are 6668 in base64: two blocks, still ending in NUL.
        let big = big.to_image().unwrap();
        assert_eq!(big.len(), 2 * CONFIG_BLOCK);
        assert_eq!(big.last(), Some(&0));
    }

    #[test]
    fn config_drive_holds_the_strictest_profiles_guest_bpf() {
        // What `--guest-seccomp default|strict` puts in the spec: about 12 and 10 KB of BPF,
        // 16 KB of drive once in base64, far past a single 4096-byte block.
        for name in ["default", "strict"] {
            let policy = hearth_seccomp::profile(name).unwrap();
            let filters = hearth_seccomp::render_bpf(&policy).unwrap();
            let bpf = hearth_proto::bpf::encode(&filters.to_raw()).unwrap();
            let image = GuestConfigDoc::new("sb-1", Some(&bpf)).to_image().unwrap();
            assert!(image.len() > CONFIG_BLOCK && image.len().is_multiple_of(CONFIG_BLOCK));
            let end = image.iter().position(|&b| b == 0).unwrap();
            let doc: GuestConfigDoc = serde_json::from_slice(&image[..end]).unwrap();
            let back = base64::engine::general_purpose::STANDARD
                .decode(doc.seccomp_bpf_b64.unwrap())
                .unwrap();
            assert_eq!(back, bpf);
        }
    }

    #[test]
    fn plan_orders_calls_and_sizes_the_machine() {
        let layout = VmLayout::jailed(Path::new("/jail/root"));
        let image = VmImage {
            kernel: "/vmlinux".into(),
            initrd: Some("/initrd.img".into()),
            rootfs: "/rootfs.ext4".into(),
        };
        let limits = ResourceLimits {
            memory: MemoryBytes(256 << 20),
            cpus: Cpus(1.5),
            pids: 64,
        };
        let plan = BootPlan::new(&layout, &image, &limits, Some(&net()));
        assert_eq!(plan.machine.vcpu_count, 2);
        assert_eq!(plan.machine.mem_size_mib, 256);
        let paths: Vec<String> = plan.calls().unwrap().into_iter().map(|c| c.path).collect();
        assert_eq!(
            paths,
            [
                "/logger",
                "/metrics",
                "/machine-config",
                "/boot-source",
                "/drives/rootfs",
                "/drives/config",
                "/network-interfaces/eth0",
                "/vsock"
            ]
        );
        assert_eq!(plan.vsock.uds_path, Path::new("/vsock.sock"));
        assert_eq!(
            plan.network.unwrap().guest_mac.as_deref(),
            Some("06:00:0a:c8:00:02")
        );
        let solo = BootPlan::new(&layout, &image, &ResourceLimits::default(), None);
        assert!(solo
            .calls()
            .unwrap()
            .iter()
            .all(|c| !c.path.starts_with("/network")));
        assert_eq!(solo.machine.vcpu_count, 1);
    }
}
