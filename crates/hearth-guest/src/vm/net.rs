//! Loopback and eth0 for a VM guest, with the classic interface ioctls: a handful of calls at
//! boot does not justify a netlink stack in the guest.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use super::cmdline::NetConfig;

/// A network step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("open a control socket: {0}")]
    Socket(nix::Error),
    #[error("{op} on {ifname}: {source}")]
    Ioctl {
        op: &'static str,
        ifname: &'static str,
        source: io::Error,
    },
    #[error("interface {0} did not appear within 10 s (is virtio_net loaded and a NIC attached?)")]
    NoInterface(&'static str),
}

/// `AF_INET` (2) as the `sa_family_t` it is stored in.
const AF_INET: libc::sa_family_t = 2;
/// `IFF_UP | IFF_MULTICAST` (0x1 | 0x1000) as the `short` of `ifr_flags`.
const UP_FLAGS: libc::c_short = 0x1001;

fn control_socket() -> Result<OwnedFd, NetError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetError::Socket)
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers and sockaddrs);
    // all-zero bytes are a valid value of every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src.cast_signed();
    }
    req
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    // sockaddr_in after the family: port (2 bytes, 0), then the address in network order.
    for (dst, src) in data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src.cast_signed();
    }
    libc::sockaddr {
        sa_family: AF_INET,
        sa_data: data,
    }
}

fn check(rc: libc::c_int, op: &'static str, ifname: &'static str) -> Result<(), NetError> {
    if rc < 0 {
        return Err(NetError::Ioctl {
            op,
            ifname,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_up(fd: &OwnedFd, ifname: &'static str) -> Result<(), NetError> {
    let mut req = ifreq(ifname);
    // IFF_UP plus multicast; the kernel keeps the flags userspace cannot change (broadcast).
    req.ifr_ifru.ifru_flags = UP_FLAGS;
    // SAFETY: SIOCSIFFLAGS reads a struct ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(rc, "SIOCSIFFLAGS", ifname)
}

/// Brings up `lo` (which needs no address: the kernel gives it 127.0.0.1 when it goes up).
pub fn loopback_up() -> Result<(), NetError> {
    set_up(&control_socket()?, "lo")
}

/// Waits for eth0, gives it the address, brings it up, adds the default route.
pub fn configure_eth0(net: &NetConfig) -> Result<(), NetError> {
    const IF: &str = "eth0";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new("/sys/class/net/eth0").exists() {
        if Instant::now() > deadline {
            return Err(NetError::NoInterface(IF));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    apply(net, false)
}

/// Moves eth0 to a new address and gateway (a VM restored from another sandbox's snapshot).
/// The old default route goes first: replacing the address does not remove a route through a
/// gateway, and the new one would otherwise sit beside it.
pub fn reconfigure_eth0(net: &NetConfig) -> Result<(), NetError> {
    apply(net, true)
}

fn apply(net: &NetConfig, replace_route: bool) -> Result<(), NetError> {
    const IF: &str = "eth0";
    let fd = control_socket()?;
    let mut req = ifreq(IF);
    req.ifr_ifru.ifru_addr = sockaddr(net.address);
    // SAFETY: SIOCSIFADDR reads a struct ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFADDR, &req) };
    check(rc, "SIOCSIFADDR", IF)?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(net.prefix))
        .unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    // SAFETY: SIOCSIFNETMASK reads a struct ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFNETMASK, &req) };
    check(rc, "SIOCSIFNETMASK", IF)?;
    set_up(&fd, IF)?;
    // SAFETY: rtentry is plain old data; all-zero is a valid (empty) route.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(net.gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    if replace_route {
        let mut any: libc::rtentry = route;
        any.rt_gateway = sockaddr(Ipv4Addr::UNSPECIFIED);
        any.rt_flags = libc::RTF_UP;
        // SAFETY: SIOCDELRT reads a struct rtentry that lives across the call; with no gateway
        // it deletes the first default route, whichever gateway it has.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCDELRT, &any) };
        // ESRCH: there was none (the address change already took it).
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            check(rc, "SIOCDELRT (old default route)", IF)?;
        }
    }
    // SAFETY: SIOCADDRT reads a struct rtentry that lives across the call; rt_dev is null, so
    // the kernel picks the interface from the gateway's subnet.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCADDRT, &route) };
    check(rc, "SIOCADDRT (default route)", IF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(i32::from(AF_INET), libc::AF_INET);
        assert_eq!(i32::from(UP_FLAGS), libc::IFF_UP | libc::IFF_MULTICAST);
        assert_eq!(sa.sa_family, AF_INET);
        let bytes: Vec<u8> = sa.sa_data[..6].iter().map(|&b| b.cast_unsigned()).collect();
        assert_eq!(bytes, [0, 0, 10, 1, 2, 3]);
        let req = ifreq("eth0");
        assert_eq!(req.ifr_name[3].cast_unsigned(), b'0');
        assert_eq!(req.ifr_name[4], 0);
    }
}
