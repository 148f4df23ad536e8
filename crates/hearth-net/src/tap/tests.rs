//! Real namespaces and links: a veth into a namespace the test makes, as FirewallManager does,
//! then the bridge, proven by a frame from the host arriving on the tap.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::*;

const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 199, 77, 1);
const SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 199, 77, 2);

/// A namespace with `eth0` = veth peer of `host_if`, addressed like a sandbox's; removed on drop.
struct TestNs {
    name: String,
    path: PathBuf,
    host_if: String,
}

impl TestNs {
    fn new() -> Self {
        let pid = std::process::id();
        let name = format!("hearthtest-tap-{pid}");
        let host_if = format!("htap{}", pid % 100_000);
        let path = netns::create(&name).unwrap();
        let ns = netns::open_ns(&path).unwrap();
        let mut host = Rtnl::open("host").unwrap();
        let _ = host.delete_link(&host_if);
        host.create_veth(&host_if, SANDBOX_IF, ns.as_fd()).unwrap();
        let index = host.link_index(&host_if).unwrap().unwrap();
        host.set_up(index, &host_if, None).unwrap();
        host.replace_address(index, &host_if, HOST_ADDR, 30)
            .unwrap();
        netns::in_netns(&path, |path| {
            let mut inside = Rtnl::open(&path.display().to_string())?;
            let eth0 = inside.link_index(SANDBOX_IF)?.unwrap();
            inside.set_up(eth0, SANDBOX_IF, None)?;
            inside.replace_address(eth0, SANDBOX_IF, SANDBOX_ADDR, 30)?;
            Ok::<_, TapError>(())
        })
        .unwrap();
        Self {
            name,
            path,
            host_if,
        }
    }

    fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.name, "-j"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = netns::remove(&self.name);
        if let Ok(mut host) = Rtnl::open("host") {
            let _ = host.delete_link(&self.host_if);
        }
    }
}

/// Sends UDP to the sandbox address from the host (each send makes the host ARP for it) until
/// an ARP request for that address comes out of the tap.
fn host_arp_reaches_tap(tap: &OwnedFd) -> bool {
    let udp = std::net::UdpSocket::bind((HOST_ADDR, 0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut frame = [0u8; 2048];
    while Instant::now() < deadline {
        let _ = udp.send_to(b"x", (SANDBOX_ADDR, 9));
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(500u16)).unwrap() == 0 {
            continue;
        }
        let n = nix::unistd::read(tap.as_raw_fd(), &mut frame).unwrap();
        // Ethernet: ethertype at 12; ARP target protocol address at 14 + 24.
        if n >= 42 && frame[12..14] == [0x08, 0x06] && frame[38..42] == SANDBOX_ADDR.octets() {
            return true;
        }
    }
    false
}

#[test]
fn bridges_the_veth_to_a_persistent_tap_and_frees_the_address() {
    let ns = TestNs::new();
    bridge_for_vm(&ns.path, SANDBOX_ADDR, 30, Some(0)).unwrap();
    // Converges when run again.
    bridge_for_vm(&ns.path, SANDBOX_ADDR, 30, Some(0)).unwrap();

    let links = ns.ip_json(&["link", "show"]);
    let link = |name: &str| {
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == name)
            .unwrap_or_else(|| panic!("no {name} in {links}"))
            .clone()
    };
    assert_eq!(link(SANDBOX_IF)["master"], BRIDGE_IF);
    assert_eq!(link(TAP_IF)["master"], BRIDGE_IF);
    let up = |l: &serde_json::Value| l["flags"].as_array().unwrap().iter().any(|f| f == "UP");
    assert!(up(&link(BRIDGE_IF)) && up(&link(TAP_IF)) && up(&link(SANDBOX_IF)));
    let details = ns.ip_json(&["-d", "link", "show", TAP_IF]);
    assert_eq!(details[0]["linkinfo"]["info_kind"], "tun");
    assert_eq!(details[0]["linkinfo"]["info_data"]["type"], "tap");
    assert_eq!(details[0]["linkinfo"]["info_data"]["pi"], false);

    // The address now belongs to the guest: nothing in the namespace holds it.
    let addrs = ns.ip_json(&["-4", "addr", "show"]);
    assert!(
        !addrs.to_string().contains(&SANDBOX_ADDR.to_string()),
        "{addrs}"
    );

    // What the host sends to the sandbox address comes out of the tap, where the VMM reads.
    let tap = netns::in_netns(&ns.path, |_| open_tap(TAP_IF, false, None)).unwrap();
    assert!(
        host_arp_reaches_tap(&tap),
        "no ARP for {SANDBOX_ADDR} on {TAP_IF}"
    );
    drop(tap);

    // Teardown is the namespace's: with it gone, the veth's host end goes too (the persistent
    // tap and the bridge die with the namespace).
    netns::remove(&ns.name).unwrap();
    let mut host = Rtnl::open("host").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.link_index(&ns.host_if).unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "{} outlived its namespace",
            ns.host_if
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
