//! What every VM backend shares: the image paths and guest network a launch needs, the kernel
//! command line `hearth-guest` parses, the config drive, and the [`relay`] that joins the
//! sandbox's guest socket to the guest.

pub mod boot_wait;
pub mod relay;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Size of the config drive: one JSON document, NUL-padded (the guest reads this much).
pub const CONFIG_DRIVE_SIZE: usize = hearth_proto::VM_CONFIG_SIZE;

/// The guest image files a VM boots (the lead maps `image::GuestImage` onto this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmImagePaths {
    /// `bzImage`/`vmlinuz`, booted with `-kernel`.
    pub kernel: PathBuf,
    /// `initramfs.cpio.gz` whose `/init` is hearth-guest.
    pub initrd: PathBuf,
    /// Read-only ext4 root filesystem, attached as the first virtio-blk drive (`/dev/vda`).
    pub rootfs: PathBuf,
}

/// Which kernel a VM boots with the guest image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKernel {
    /// The image's own (Debian) kernel and its initramfs with modules: QEMU.
    Image,
    /// The kernel built for Firecracker (everything built in) and the module-less initramfs.
    Firecracker,
}

/// Why a VM has no image to boot: one line, saying how to make one where hearth knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ImageUnavailable(pub String);

/// Where a VM backend finds what it boots: hearth's image store (`hearth-image`, which builds
/// the images and depends on this crate, implements it).
pub trait GuestImageSource: std::fmt::Debug + Send + Sync {
    /// The current image, with `kernel`.
    fn current(&self, kernel: BootKernel) -> Result<VmImagePaths, ImageUnavailable>;

    /// The image whose root filesystem is `rootfs` (a saved VM has it mounted), if it is
    /// still complete.
    fn with_rootfs(&self, rootfs: &std::path::Path) -> Result<VmImagePaths, ImageUnavailable>;

    /// [`Self::with_rootfs`] for a restore, its error naming the saved VM's image.
    fn of_saved(
        &self,
        rootfs: &std::path::Path,
    ) -> Result<VmImagePaths, crate::backend::BackendError> {
        self.with_rootfs(rootfs)
            .map_err(|source| crate::backend::BackendError::SavedImage {
                path: rootfs.to_owned(),
                source,
            })
    }
}

/// An image source with no images: for backends driven with explicit `LaunchContext::vm_image`
/// paths (tests, tools), whose lookups say so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGuestImages;

impl GuestImageSource for NoGuestImages {
    fn current(&self, _kernel: BootKernel) -> Result<VmImagePaths, ImageUnavailable> {
        Err(ImageUnavailable(
            "no image store: pass the image paths".to_owned(),
        ))
    }

    fn with_rootfs(&self, rootfs: &std::path::Path) -> Result<VmImagePaths, ImageUnavailable> {
        Err(ImageUnavailable(format!(
            "no image store to find {}",
            rootfs.display()
        )))
    }
}

/// The guest's side of the sandbox link: the guest configures `eth0` with it (the VM's NIC is
/// bridged to the sandbox's veth inside the netns, see `net::tap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
}

impl GuestNet {
    /// The guest's side of a sandbox link made by `FirewallManager`. A guest's resolv.conf
    /// cannot name a port, so the link's resolver must listen on 53 (the default) for a VM.
    pub fn from_link(link: &crate::net::SandboxLink) -> Self {
        Self {
            address: link.sandbox_addr,
            prefix: link.subnet.prefix_len(),
            gateway: link.host_addr,
            dns: link.host_addr,
        }
    }
}

/// How `hearth-guest` finds its host channel (`hearth.transport=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestTransport {
    /// A named virtio-serial port; the host side is an HTTP/2 stream (see [`relay`]).
    VirtioSerial { port_name: String },
    /// An AF_VSOCK listener on this port.
    Vsock { port: u32 },
}

impl GuestTransport {
    fn cmdline_value(&self) -> String {
        match self {
            Self::VirtioSerial { port_name } => format!("virtio-serial:{port_name}"),
            Self::Vsock { port } => format!("vsock:{port}"),
        }
    }
}

pub use hearth_proto::{VmGuestConfig, GUEST_SERIAL_PORT_NAME, GUEST_VSOCK_PORT};

/// What the kernel command line tells `hearth-guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCmdline {
    pub transport: GuestTransport,
    /// Root filesystem device, `/dev/vda` when the rootfs is the first virtio-blk drive.
    pub root: String,
    pub net: Option<GuestNet>,
    /// Config drive device (`/dev/vdb`), if one is attached.
    pub config: Option<String>,
    /// The workspace arrives over 9p with tag `workspace` (QEMU only).
    pub workspace_9p: bool,
}

impl KernelCmdline {
    /// `console=ttyS0 panic=-1 reboot=t quiet hearth.transport=.. hearth.root=..` and the
    /// optional keys, in the contract's order.
    pub fn render(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_owned(),
            "panic=-1".to_owned(),
            "reboot=t".to_owned(),
            "quiet".to_owned(),
            format!("hearth.transport={}", self.transport.cmdline_value()),
            format!("hearth.root={}", self.root),
        ];
        if let Some(net) = &self.net {
            words.push(format!(
                "hearth.net={}/{},{}",
                net.address, net.prefix, net.gateway
            ));
            words.push(format!("hearth.dns={}", net.dns));
        }
        if let Some(config) = &self.config {
            words.push(format!("hearth.config={config}"));
        }
        if self.workspace_9p {
            words.push("hearth.workspace=9p".to_owned());
        }
        words.join(" ")
    }
}

/// Why the config drive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("the guest config is {len} bytes, over the {CONFIG_DRIVE_SIZE}-byte config drive")]
    TooLarge { len: usize },
    #[error("cannot write the config drive {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompRenderError),
}

/// The config drive's bytes: the JSON document then NULs up to [`CONFIG_DRIVE_SIZE`].
pub fn config_drive_bytes(config: &VmGuestConfig) -> Result<Vec<u8>, ConfigDriveError> {
    // A struct of strings and a string map always serializes.
    let mut bytes = serde_json::to_vec(config).unwrap_or_default();
    if bytes.len() >= CONFIG_DRIVE_SIZE {
        return Err(ConfigDriveError::TooLarge { len: bytes.len() });
    }
    bytes.resize(CONFIG_DRIVE_SIZE, 0);
    Ok(bytes)
}

/// The config drive's document for a sandbox's VM: its workload policy as the BPF its
/// `hearth-guest` installs, audited calls answered by the guest.
pub fn spec_guest_config(
    spec: &crate::spec::SandboxSpec,
) -> Result<VmGuestConfig, ConfigDriveError> {
    let bpf = spec
        .seccomp
        .as_ref()
        .map(crate::seccomp::SpecSeccomp::vm_guest_bpf)
        .transpose()?;
    let mut config = guest_config(spec.id.as_str(), bpf.as_deref(), Some(spec.limits.pids));
    config.exec_defaults = spec
        .template
        .as_ref()
        .map(|t| t.exec_defaults.clone())
        .filter(|d| !d.is_empty());
    Ok(config)
}

/// The config drive's document for a sandbox: its hostname and the guest's seccomp program (raw
/// BPF, carried base64), with no extra environment.
pub fn guest_config(
    hostname: &str,
    guest_seccomp: Option<&[u8]>,
    pids_max: Option<u32>,
) -> VmGuestConfig {
    use base64::Engine as _;
    VmGuestConfig {
        seccomp_bpf_b64: guest_seccomp
            .map(|bpf| base64::engine::general_purpose::STANDARD.encode(bpf)),
        env: Default::default(),
        hostname: hostname.to_owned(),
        pids_max,
        exec_defaults: None,
    }
}

/// Writes the config drive at `path` (created exclusively, 0600).
pub fn write_config_drive(path: &Path, config: &VmGuestConfig) -> Result<(), ConfigDriveError> {
    let bytes = config_drive_bytes(config)?;
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    write().map_err(|source| ConfigDriveError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn cmdline_has_the_contract_keys_in_order() {
        let mut cmdline = KernelCmdline {
            transport: GuestTransport::VirtioSerial {
                port_name: GUEST_SERIAL_PORT_NAME.to_owned(),
            },
            root: "/dev/vda".to_owned(),
            net: None,
            config: None,
            workspace_9p: false,
        };
        assert_eq!(
            cmdline.render(),
            "console=ttyS0 panic=-1 reboot=t quiet \
             hearth.transport=virtio-serial:org.hearth.guest.0 hearth.root=/dev/vda"
        );
        cmdline.transport = GuestTransport::Vsock {
            port: GUEST_VSOCK_PORT,
        };
        cmdline.net = Some(GuestNet {
            address: Ipv4Addr::new(10, 231, 0, 2),
            prefix: 30,
            gateway: Ipv4Addr::new(10, 231, 0, 1),
            dns: Ipv4Addr::new(10, 231, 0, 1),
        });
        cmdline.config = Some("/dev/vdb".to_owned());
        cmdline.workspace_9p = true;
        assert_eq!(
            cmdline.render(),
            "console=ttyS0 panic=-1 reboot=t quiet hearth.transport=vsock:1024 \
             hearth.root=/dev/vda hearth.net=10.231.0.2/30,10.231.0.1 hearth.dns=10.231.0.1 \
             hearth.config=/dev/vdb hearth.workspace=9p"
        );
    }

    #[test]
    fn config_drive_is_json_then_nul_padding() {
        let config = VmGuestConfig {
            seccomp_bpf_b64: Some("AAAA".to_owned()),
            env: BTreeMap::from([("A".to_owned(), "b".to_owned())]),
            hostname: "sb-1".to_owned(),
            pids_max: Some(64),
            exec_defaults: None,
        };
        let bytes = config_drive_bytes(&config).unwrap();
        assert_eq!(bytes.len(), CONFIG_DRIVE_SIZE);
        let end = bytes.iter().position(|&b| b == 0).unwrap();
        assert!(bytes[end..].iter().all(|&b| b == 0));
        let back: VmGuestConfig = serde_json::from_slice(&bytes[..end]).unwrap();
        assert_eq!(back, config);
        let json: serde_json::Value = serde_json::from_slice(&bytes[..end]).unwrap();
        assert_eq!(json["seccomp_bpf_b64"], "AAAA");
        assert_eq!(json["env"]["A"], "b");
        assert_eq!(json["hostname"], "sb-1");
        assert_eq!(json["pids_max"], 64);

        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.img");
        write_config_drive(&path, &config).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // Exclusive: a second write does not clobber.
        assert!(write_config_drive(&path, &config).is_err());

        let huge = VmGuestConfig {
            seccomp_bpf_b64: Some("A".repeat(CONFIG_DRIVE_SIZE)),
            ..VmGuestConfig::default()
        };
        assert!(matches!(
            config_drive_bytes(&huge),
            Err(ConfigDriveError::TooLarge { .. })
        ));
    }
}
