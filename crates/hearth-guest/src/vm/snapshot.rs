//! The guest's side of a VM snapshot: `quiesce` before QEMU saves the VM, `thaw` after it (in
//! the same VM) or after a restore (in a new VM that resumes this memory).
//!
//! QEMU refuses to migrate while the 9p workspace is mounted: its fids name files of one host
//! directory. So `quiesce` unmounts it (not lazily: a lazy unmount keeps the fids, and with
//! them QEMU's blocker) and `thaw` mounts it again, from whatever directory the VM now shares,
//! which after a restore is the new sandbox's workspace.
//!
//! A restored guest also still carries the source sandbox's network identity: its kernel
//! command line and eth0 are the source's. The host's firewall, resolver and gateway know the
//! new sandbox by its own address, so `thaw` moves eth0 to it (and the hostname to the new id).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hearth_proto::{ErrorKind, VmThaw};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};

use super::cmdline::{NetConfig, Workspace};
use crate::http::ApiError;

const WORKSPACE: &str = "/workspace";

/// Set by a `quiesce` that unmounted the 9p workspace; saved with the VM's memory, so a restored
/// guest knows to mount it again.
static DETACHED: AtomicBool = AtomicBool::new(false);

/// Unmounts the 9p workspace (nothing to do for a tmpfs one, which is guest memory).
pub fn quiesce(workspace: Workspace) -> Result<(), ApiError> {
    if workspace != Workspace::NineP || DETACHED.load(Ordering::SeqCst) {
        return Ok(());
    }
    nix::unistd::sync();
    match umount2(WORKSPACE, MntFlags::empty()) {
        Ok(()) => {
            DETACHED.store(true, Ordering::SeqCst);
            Ok(())
        }
        Err(Errno::EBUSY) => Err(ApiError::new(
            ErrorKind::Busy,
            "a process in the sandbox still uses /workspace (an open file or its working \
             directory); a snapshot cannot include the shared workspace, so stop it first",
        )),
        Err(err) => Err(ApiError::new(
            ErrorKind::Io,
            format!("unmount {WORKSPACE}: {err}"),
        )),
    }
}

/// Takes on `thaw`'s identity, then mounts the workspace again if `quiesce` unmounted it.
pub fn thaw(workspace: Workspace, req: &VmThaw) -> Result<(), ApiError> {
    if let Some(hostname) = &req.hostname {
        check_hostname(hostname)?;
        nix::unistd::sethostname(hostname)
            .map_err(|err| ApiError::new(ErrorKind::Io, format!("sethostname: {err}")))?;
    }
    if let Some(net) = &req.net {
        if !(1..=30).contains(&net.prefix) {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("prefix /{} is not from /1 to /30", net.prefix),
            ));
        }
        super::net::reconfigure_eth0(&NetConfig {
            address: net.address,
            prefix: net.prefix,
            gateway: net.gateway,
        })
        .map_err(|err| ApiError::new(ErrorKind::Io, err.to_string()))?;
        let path = Path::new("/run/resolv.conf");
        std::fs::write(path, format!("nameserver {}\n", net.dns))
            .map_err(|err| ApiError::from_io(&err, format!("write {}", path.display())))?;
    }
    if workspace == Workspace::NineP && DETACHED.load(Ordering::SeqCst) {
        super::mount_fs(
            "9p",
            "workspace",
            WORKSPACE,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(super::NINEP_OPTIONS),
        )
        .map_err(|err| ApiError::new(ErrorKind::Io, err.to_string()))?;
        DETACHED.store(false, Ordering::SeqCst);
    }
    Ok(())
}

/// A hostname the host sends is a sandbox id; anything else is refused rather than set.
fn check_hostname(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("{name:?} is not a valid hostname"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_sandbox_ids() {
        assert!(check_hostname("sbx-2").is_ok());
        for bad in ["", "-a", "A", "a.b", "a b", &"a".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_tmpfs_workspace_needs_nothing() {
        // Neither touches the host: a tmpfs workspace is guest memory and travels along.
        assert!(quiesce(Workspace::Tmpfs).is_ok());
        assert!(thaw(Workspace::Tmpfs, &VmThaw::default()).is_ok());
        assert!(!DETACHED.load(Ordering::SeqCst));
    }
}
