//! Where one VM's files live, as the host sees them and as Firecracker sees them.
//!
//! Run directly, Firecracker's files are in the sandbox's `vm/` dir, which it sees
//! bind-mounted on one fixed path in a mount namespace of its own (see `process::MountView`).
//! Under the jailer it is chrooted into `<chroot base>/<exec name>/<id>/root`, so the same files
//! live there and the API is given paths relative to that root (`/api.sock`). Only the pid file
//! stays in `vm/` either way: it belongs to hearth, not to the jailed VMM.

use std::path::{Path, PathBuf};

/// The API socket (`--api-sock`).
pub const API_SOCKET: &str = "api.sock";
/// Firecracker's host side of the vsock device (`PUT /vsock` `uds_path`).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The raw config drive (`hearth.config=/dev/vdb`).
pub const CONFIG_IMAGE: &str = "config.img";
/// Firecracker's logger output (`PUT /logger`); seccomp faults are logged here. (The VMM's
/// stdout and stderr, which carry the guest console, go to `vm/vmm.log`.)
pub const FIRECRACKER_LOG: &str = "firecracker.log";
/// Firecracker's metrics (`PUT /metrics`).
pub const METRICS: &str = "metrics.json";
/// The compiled VMM filter (`--seccomp-filter`).
pub const SECCOMP_FILTER: &str = "seccomp.bpf";
/// Names the image files get inside a jail.
pub const KERNEL: &str = "vmlinux";
pub const INITRD: &str = "initrd.img";
pub const ROOTFS: &str = "rootfs.ext4";
/// Snapshot state and memory files (written by `PUT /snapshot/create`).
pub const SNAPSHOT_STATE: &str = "snapshot.state";
pub const SNAPSHOT_MEMORY: &str = "snapshot.mem";
/// A restore's input, placed in the jail: other names than a snapshot's output, because the
/// restored VM's memory stays mapped from its file, which a later snapshot must not overwrite.
pub const RESTORE_STATE: &str = "restore.state";
pub const RESTORE_MEMORY: &str = "restore.mem";

/// One VM's file locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    /// The directory holding the VMM's files, on the host.
    pub host_root: PathBuf,
    /// The same directory as Firecracker names it (`/` in a jail).
    pub vmm_root: PathBuf,
}

impl VmLayout {
    /// Firecracker run directly, seeing the host's paths: both views are the sandbox's `vm/` dir.
    pub fn direct(vm_dir: &Path) -> Self {
        Self::viewed(vm_dir, vm_dir)
    }

    /// Firecracker run directly in a mount namespace where `vm_dir` is mounted on `view`.
    pub fn viewed(vm_dir: &Path, view: &Path) -> Self {
        Self {
            host_root: vm_dir.to_owned(),
            vmm_root: view.to_owned(),
        }
    }

    /// Firecracker in a jail rooted at `chroot_root`.
    pub fn jailed(chroot_root: &Path) -> Self {
        Self {
            host_root: chroot_root.to_owned(),
            vmm_root: PathBuf::from("/"),
        }
    }

    /// `name` as the host opens it.
    pub fn host(&self, name: &str) -> PathBuf {
        self.host_root.join(name)
    }

    /// `name` as Firecracker opens it.
    pub fn vmm(&self, name: &str) -> PathBuf {
        self.vmm_root.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jailed_paths_are_chroot_relative_for_the_vmm() {
        let jail = VmLayout::jailed(Path::new("/run/hearth/jail/firecracker/sb-1/root"));
        assert_eq!(
            jail.host(API_SOCKET),
            Path::new("/run/hearth/jail/firecracker/sb-1/root/api.sock")
        );
        assert_eq!(jail.vmm(API_SOCKET), Path::new("/api.sock"));
        let direct = VmLayout::direct(Path::new("/run/hearth/sandboxes/sb-1/vm"));
        assert_eq!(direct.host(VSOCK_SOCKET), direct.vmm(VSOCK_SOCKET));
        let viewed = VmLayout::viewed(
            Path::new("/run/hearth/sandboxes/sb-1/vm"),
            Path::new("/run/hearth/vmm-view"),
        );
        assert_eq!(
            viewed.host(CONFIG_IMAGE),
            Path::new("/run/hearth/sandboxes/sb-1/vm/config.img")
        );
        assert_eq!(
            viewed.vmm(CONFIG_IMAGE),
            Path::new("/run/hearth/vmm-view/config.img")
        );
    }
}
