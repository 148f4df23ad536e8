//! What a sandbox can and cannot reach, against the real kernel (root needed). Traffic goes only
//! to test hosts in namespaces these tests make, never to a real network (see `hearth_test_support::net`).

use std::net::Ipv4Addr;

use hearth_net::{DropReason, NetPolicy};
use hearth_test_support::net::*;

const ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const UNLISTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);

fn policy(allow: &[&str], allow_private: bool) -> NetPolicy {
    NetPolicy {
        allow_private,
        ..NetPolicy::allowlist(allow).unwrap()
    }
}

#[test]
fn allowlisted_host_is_reachable_and_unlisted_host_is_dropped_and_counted() {
    let sb = Sandbox::new("allow", &policy(&["203.0.113.10/32:8080"], false));
    let up = Upstream::new(&[ALLOWED, UNLISTED], &[sb.veth()]);
    let allowed = up.serve(sock(ALLOWED, 8080), "allowed");
    let unlisted = up.serve(sock(UNLISTED, 8080), "unlisted");

    // A real client in the sandbox's namespace, as an agent would run it.
    let ns = sb.id.names().netns;
    let body = sh(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "curl",
        "-s",
        "--max-time",
        "5",
        "http://203.0.113.10:8080/",
    ]);
    assert_eq!(body, "allowed");
    assert!(sb
        .connect(sock(ALLOWED, 8080))
        .unwrap()
        .ends_with("allowed"));

    let before = manager().dropped(&sb.id, DropReason::Egress).unwrap();
    let err = sb
        .connect(sock(UNLISTED, 8080))
        .expect_err("unlisted host must be unreachable");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "{err}"
    );
    assert!(
        sb.connect(sock(ALLOWED, 9999)).is_err(),
        "another port of an allowed host is not allowed"
    );
    let after = manager().dropped(&sb.id, DropReason::Egress).unwrap();
    assert!(
        after > before,
        "drop counter did not move: {before} -> {after}"
    );
    assert_eq!(unlisted.hits(), 0);
    assert!(allowed.hits() >= 2);
}

#[test]
fn metadata_address_is_unreachable_even_when_allowlisted() {
    let sb = Sandbox::new(
        "meta",
        &policy(&["169.254.169.254/32:80", "203.0.113.10/32"], true),
    );
    let up = Upstream::new(&[METADATA, ALLOWED], &[sb.veth()]);
    let metadata = up.serve(sock(METADATA, 80), "metadata");
    let control = up.serve(sock(ALLOWED, 80), "control");

    assert!(
        sb.connect(sock(ALLOWED, 80)).is_ok(),
        "the path to the upstream namespace works"
    );
    assert!(sb.connect(sock(METADATA, 80)).is_err());
    assert!(manager().dropped(&sb.id, DropReason::Always).unwrap() > 0);
    assert_eq!(metadata.hits(), 0);
    assert_eq!(control.hits(), 1);
}

#[test]
fn private_address_is_unreachable_unless_allow_private() {
    let sb = Sandbox::new("private", &policy(&["10.99.0.0/24:8080"], false));
    let up = Upstream::new(&[PRIVATE], &[sb.veth()]);
    let server = up.serve(sock(PRIVATE, 8080), "private");

    assert!(sb.connect(sock(PRIVATE, 8080)).is_err());
    assert!(manager().dropped(&sb.id, DropReason::Private).unwrap() > 0);
    assert_eq!(server.hits(), 0);

    // Setting up again with allow_private replaces the ruleset in place (setup is idempotent).
    let again = manager()
        .setup(&sb.id, &policy(&["10.99.0.0/24:8080"], true))
        .unwrap();
    assert_eq!(again, sb.net, "same namespace, link and addresses");
    assert!(sb
        .connect(sock(PRIVATE, 8080))
        .unwrap()
        .ends_with("private"));
}

#[test]
fn two_sandboxes_cannot_reach_each_other() {
    // Even allowing all private space does not open other sandboxes.
    let permissive = policy(&["10.0.0.0/8"], true);
    let a = Sandbox::new("peer-a", &permissive);
    let b = Sandbox::new("peer-b", &permissive);
    let in_b = TestServer::tcp(Some(&b.net.netns), sock(b.addr(), 7000), "b");
    let in_a = TestServer::tcp(Some(&a.net.netns), sock(a.addr(), 7000), "a");

    assert!(a.connect(sock(b.addr(), 7000)).is_err());
    assert!(b.connect(sock(a.addr(), 7000)).is_err());
    assert!(
        a.connect(sock(b.host_addr(), 7000)).is_err(),
        "nor the host side of another sandbox"
    );
    let drops = |sb: &Sandbox| {
        let m = manager();
        m.dropped(&sb.id, DropReason::Always).unwrap()
            + m.dropped(&sb.id, DropReason::Ingress).unwrap()
    };
    assert!(drops(&a) > 0 && drops(&b) > 0);
    assert_eq!((in_a.hits(), in_b.hits()), (0, 0));

    // Control: without the two tables the same connection goes through, so the firewall (not
    // routing) is what stopped it.
    for sb in [&a, &b] {
        sh(&["nft", "delete", "table", "inet", &sb.id.names().nft_table]);
    }
    assert!(a.connect(sock(b.addr(), 7000)).unwrap().ends_with('b'));
}

#[test]
fn gateway_and_resolver_are_reachable_other_host_services_are_not() {
    let sb = Sandbox::new("gw", &NetPolicy::default());
    let gateway = TestServer::tcp(None, sock(sb.host_addr(), GATEWAY_PORT), "gateway");
    let other = TestServer::tcp(None, sock(sb.host_addr(), GATEWAY_PORT + 1), "other");
    let dns = TestServer::udp_echo(sock(sb.host_addr(), DNS_PORT));

    assert!(sb
        .connect(sock(sb.host_addr(), GATEWAY_PORT))
        .unwrap()
        .ends_with("gateway"));
    assert_eq!(
        udp_from(&sb.net.netns, sock(sb.host_addr(), DNS_PORT)).unwrap(),
        "ping"
    );
    assert!(sb.connect(sock(sb.host_addr(), GATEWAY_PORT + 1)).is_err());
    assert!(manager().dropped(&sb.id, DropReason::Host).unwrap() > 0);
    assert_eq!(other.hits(), 0);
    assert_eq!((gateway.hits(), dns.hits()), (1, 1));
}

#[test]
fn inbound_connections_need_a_published_port() {
    let closed = Sandbox::new("in-closed", &NetPolicy::default());
    let open = Sandbox::new(
        "in-open",
        &NetPolicy {
            publish: vec![8000],
            ..NetPolicy::default()
        },
    );
    let _s1 = TestServer::tcp(Some(&closed.net.netns), sock(closed.addr(), 8000), "closed");
    let _s2 = TestServer::tcp(Some(&open.net.netns), sock(open.addr(), 8000), "open");

    let from_host = |to| tcp_from(std::path::Path::new("/proc/self/ns/net"), to);
    assert!(from_host(sock(closed.addr(), 8000)).is_err());
    assert!(manager().dropped(&closed.id, DropReason::Ingress).unwrap() > 0);
    assert!(from_host(sock(open.addr(), 8000))
        .unwrap()
        .ends_with("open"));
}

#[test]
fn ipv6_is_off_inside_the_sandbox() {
    let sb = Sandbox::new("v6", &NetPolicy::default());
    let ns = sb.id.names().netns;
    assert_eq!(
        sh(&["ip", "-n", &ns, "-6", "addr"]).trim(),
        "",
        "no IPv6 address, not even link-local"
    );
    let knob = sh(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "cat",
        "/proc/sys/net/ipv6/conf/all/disable_ipv6",
    ]);
    assert_eq!(knob.trim(), "1");
}
