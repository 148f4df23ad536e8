//! What hearth tells Firecracker before `InstanceStart`: the kernel command line, the config
//! drive, and the ordered list of API calls (the boot plan).
//!
//! The command line and the config drive follow the VM contract shared with the QEMU backend and
//! `hearth-guest`: `hearth.transport=vsock:1024`, `hearth.root=/dev/vda` (the read-only rootfs,
//! attached first so it is `vda`), `hearth.config=/dev/vdb` (one JSON document, NUL-padded),
//! optional `hearth.net=` and `hearth.dns=`.

use std::net::Ipv4Addr;
use std::path::Path;

use super::api::{
    ApiCall, ApiRequest, BootSource, Drive, LogLevel, Logger, MachineConfig, MemoryBackend,
    MemoryBackendType, Metrics, NetworkInterface, SnapshotLoad, Vsock, VsockOverride,
};
use super::layout::{self, VmLayout};
use crate::backend::vm::{GuestNet, GuestTransport, KernelCmdline, VmImagePaths, GUEST_VSOCK_PORT};
use crate::spec::ResourceLimits;

/// The guest's vsock context id (any value from 3 up; each VM has its own device).
pub const GUEST_CID: u32 = 3;
/// The tap device inside the sandbox's netns (made by `net::tap::bridge_for_vm`).
pub const TAP_NAME: &str = crate::net::tap::TAP_IF;
/// Firecracker accepts 1 to 32 vCPUs.
const MAX_VCPUS: u8 = 32;

/// The kernel command line for a Firecracker guest: the shared VM contract (the same
/// [`KernelCmdline`] QEMU renders) over vsock, with the config drive as `vdb` and no 9p
/// workspace (Firecracker has no virtio-9p), plus `pci=off`: Firecracker has only MMIO devices,
/// so the kernel skips the PCI probe at boot.
pub fn kernel_cmdline(net: Option<&GuestNet>) -> String {
    let cmdline = KernelCmdline {
        transport: GuestTransport::Vsock {
            port: GUEST_VSOCK_PORT,
        },
        root: "/dev/vda".to_owned(),
        net: net.copied(),
        config: Some("/dev/vdb".to_owned()),
        workspace_9p: false,
    };
    format!("{} pci=off", cmdline.render())
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
        image: &VmImagePaths,
        limits: &ResourceLimits,
        net: Option<&GuestNet>,
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
                initrd_path: Some(image.initrd.clone()),
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
pub fn vcpus(limits: &ResourceLimits) -> u8 {
    let wanted = limits.cpus.0.ceil().clamp(1.0, f64::from(MAX_VCPUS));
    // Clamped to 1..=32 just above, so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count = wanted as u8;
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vm::{guest_config, VmGuestConfig};
    use crate::spec::{Cpus, MemoryBytes};
    use base64::Engine as _;
    use std::path::Path;

    fn net() -> GuestNet {
        GuestNet {
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
            "pci=off",
        ] {
            assert!(line.split(' ').any(|w| w == key), "{key} missing: {line}");
        }
        assert!(!kernel_cmdline(None).contains("hearth.net"));
    }

    #[test]
    fn config_drive_holds_the_strictest_profiles_guest_bpf() {
        // What `--guest-seccomp default|strict` puts in the spec: about 12 and 10 KB of BPF,
        // 16 KB once in base64, which the shared fixed-size config drive must still hold.
        for name in ["default", "strict"] {
            let policy = hearth_seccomp::profile(name).unwrap();
            let filters = hearth_seccomp::render_bpf(&policy).unwrap();
            let bpf = hearth_proto::bpf::encode(&filters.to_raw()).unwrap();
            let config = guest_config("sb-1", Some(&bpf), None);
            let image = crate::backend::vm::config_drive_bytes(&config).unwrap();
            let end = image.iter().position(|&b| b == 0).unwrap();
            let doc: VmGuestConfig = serde_json::from_slice(&image[..end]).unwrap();
            let back = base64::engine::general_purpose::STANDARD
                .decode(doc.seccomp_bpf_b64.unwrap())
                .unwrap();
            assert_eq!(back, bpf);
            assert_eq!(doc.hostname, "sb-1");
        }
    }

    #[test]
    fn plan_orders_calls_and_sizes_the_machine() {
        let layout = VmLayout::jailed(Path::new("/jail/root"));
        let image = VmImagePaths {
            kernel: "/vmlinux".into(),
            initrd: "/initrd.img".into(),
            rootfs: "/rootfs.ext4".into(),
        };
        let limits = ResourceLimits {
            memory: MemoryBytes(256 << 20),
            cpus: Cpus(1.5),
            pids: 64,
            ..ResourceLimits::default()
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
