//! The VM's network inside a sandbox's namespace: a tap for the VMM, bridged to the veth.
//!
//! [`super::FirewallManager`] gives every sandbox a namespace whose `eth0` is the veth peer of a
//! host link, holding the sandbox's address, with the firewall on the host side. A container
//! uses `eth0` directly; a VM has its own kernel, so the address belongs to the guest's NIC
//! instead. [`bridge_for_vm`] makes, inside the namespace:
//!
//! ```text
//!   host: vethX ══ eth0 ─┐
//!                        br0  (no address: a plain L2 switch)
//!   VMM:  tap0 ──────────┘    guest eth0 = the sandbox address, gateway = host side of vethX
//! ```
//!
//! and moves the address off `eth0` (the namespace's route via it goes too). The host-side
//! firewall sees the same veth and the same address as with a container, so nothing there
//! changes. The names are fixed: they are local to the namespace.
//!
//! hearth creates `tap0` itself, persistent (`TUNSETPERSIST`) and owned by the VMM's uid,
//! before the VMM starts, rather than letting QEMU create it: Firecracker cannot create taps,
//! the bridge can be fully built and checked before any VMM runs, and QEMU simply attaches to
//! the existing device (`-netdev tap,ifname=tap0,script=no,downscript=no`, run inside the
//! namespace). There is no teardown here: deleting the namespace (FirewallManager's teardown)
//! destroys the tap, the bridge and the veth with it.

use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::firewall::SANDBOX_IF;
use super::netns::{self, NetError};
use super::rtnl::{LinkError, Rtnl};

/// The tap the VMM attaches to, inside the sandbox's namespace.
pub const TAP_IF: &str = "tap0";
/// The bridge joining `eth0` and `tap0`.
pub const BRIDGE_IF: &str = "br0";

const TUN_DEVICE: &str = "/dev/net/tun";

/// Why the VM's network could not be set up; each variant names the device or namespace.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Netns(#[from] NetError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot open {TUN_DEVICE}: {source}")]
    OpenTun { source: io::Error },
    #[error("cannot {op} tap {name}: {source}")]
    Tap {
        op: &'static str,
        name: &'static str,
        source: Errno,
    },
    #[error("{name} is missing in the network namespace {netns}")]
    MissingLink { name: &'static str, netns: PathBuf },
}

/// Inside the namespace at `netns`: creates the persistent tap `tap0` (owned by `tap_owner`,
/// the VMM's uid, when given) and the bridge `br0`, enslaves `eth0` and `tap0` to it, removes
/// `address/prefix` from `eth0` and brings everything up. Running it again converges.
pub fn bridge_for_vm(
    netns: &Path,
    address: Ipv4Addr,
    prefix: u8,
    tap_owner: Option<u32>,
) -> Result<(), TapError> {
    netns::in_netns(netns, |netns| {
        // The tap is made by a TUNSETIFF in this namespace; closing the fd keeps it (persistent).
        drop(open_tap(TAP_IF, true, tap_owner)?);
        let mut rtnl = Rtnl::open(&netns.display().to_string())?;
        let missing = |name| TapError::MissingLink {
            name,
            netns: netns.to_owned(),
        };
        let bridge = match rtnl.link_index(BRIDGE_IF)? {
            Some(index) => index,
            None => {
                rtnl.create_bridge(BRIDGE_IF)?;
                rtnl.link_index(BRIDGE_IF)?
                    .ok_or_else(|| missing(BRIDGE_IF))?
            }
        };
        let eth0 = rtnl
            .link_index(SANDBOX_IF)?
            .ok_or_else(|| missing(SANDBOX_IF))?;
        let tap = rtnl.link_index(TAP_IF)?.ok_or_else(|| missing(TAP_IF))?;
        rtnl.delete_address(eth0, SANDBOX_IF, address, prefix)?;
        rtnl.set_controller(eth0, SANDBOX_IF, bridge)?;
        rtnl.set_controller(tap, TAP_IF, bridge)?;
        rtnl.set_up(bridge, BRIDGE_IF, None)?;
        rtnl.set_up(tap, TAP_IF, None)?;
        rtnl.set_up(eth0, SANDBOX_IF, None)?;
        Ok(())
    })
}

/// An fd attached to the sandbox's `tap0` (made by [`bridge_for_vm`]), for a VMM that cannot
/// open `/dev/net/tun` itself.
pub fn attach_vm_tap(netns: &Path) -> Result<OwnedFd, TapError> {
    netns::in_netns(netns, |_| open_tap(TAP_IF, true, None))
}

/// Opens (creating if missing) the tap `name` in the calling thread's namespace. With
/// `persist`, it outlives the returned fd, owned by `owner` when given.
pub(crate) fn open_tap(
    name: &'static str,
    persist: bool,
    owner: Option<u32>,
) -> Result<OwnedFd, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|source| TapError::OpenTun { source })?;
    let fd = OwnedFd::from(file);
    // SAFETY: `ifreq` is plain old data; all-zero bytes are a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The last byte stays NUL whatever the name's length.
    let room = req.ifr_name.len() - 1;
    for (dst, src) in req.ifr_name.iter_mut().take(room).zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // Both flags fit the kernel's `short` field (0x0002 | 0x1000).
    let flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap_or_default();
    req.ifr_ifru.ifru_flags = flags;
    let tap_err = |op, source| TapError::Tap { op, name, source };
    // SAFETY: `fd` is an open /dev/net/tun fd and `req` a valid, exclusively borrowed `ifreq`
    // with a NUL-terminated name (zeroed, and the last byte is never written), which is what
    // TUNSETIFF reads and writes.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            std::ptr::from_mut(&mut req),
        )
    };
    Errno::result(rc).map_err(|e| tap_err("create", e))?;
    if persist {
        // SAFETY: TUNSETPERSIST takes its argument by value; `fd` is attached to the tap.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
        Errno::result(rc).map_err(|e| tap_err("make persistent", e))?;
    }
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid by value; `fd` is attached to the tap.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid)) };
        Errno::result(rc).map_err(|e| tap_err("set the owner of", e))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests;
