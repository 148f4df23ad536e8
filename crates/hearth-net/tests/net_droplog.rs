//! Drops reach hearth through nflog with their sandbox, reason and destination (root needed).
//! Traffic goes only to test hosts in namespaces this test makes (see `hearth_test_support::net`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_net::{
    AddressPool, DropEvent, DropLog, DropReason, FirewallConfig, FirewallManager, MemorySlotStore,
    NetPolicy, NflogReader,
};
use hearth_test_support::net::*;

/// Reads events until `want` matches one or 5 s pass; returns everything read.
fn read_until(reader: &mut NflogReader, want: impl Fn(&DropEvent) -> bool) -> Vec<DropEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(&want) {
        seen.extend(reader.recv(Duration::from_millis(200)).expect("read nflog"));
    }
    seen
}

#[test]
fn drops_are_logged_with_sandbox_reason_and_destination() {
    // Its own nflog group (one reader per group) and its own pool and store.
    let group = 5000 + u16::try_from(std::process::id() % 1000).unwrap();
    let config = FirewallConfig {
        pool: AddressPool::new("10.238.2.0/24".parse().unwrap(), 30).unwrap(),
        log_group: group,
        ..test_config()
    };
    let mgr = FirewallManager::new(config, Arc::new(MemorySlotStore::new())).unwrap();
    let id = unique_id("nflog");
    let net = mgr
        .setup(&id, &NetPolicy::allowlist(&["203.0.113.10/32"]).unwrap())
        .unwrap();
    // Each sandbox logs to the group of its slot.
    let link_group = net.link.as_ref().unwrap().log_group;
    assert_eq!(
        link_group,
        group + u16::try_from(net.link.as_ref().unwrap().slot).unwrap()
    );
    let mut reader = NflogReader::bind(link_group).expect("bind nflog group");
    struct Down<'a>(&'a FirewallManager, hearth_id::SandboxId);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = self.0.teardown(&self.1);
        }
    }
    let _down = Down(&mgr, id.clone());
    let unlisted = Ipv4Addr::new(203, 0, 113, 20);
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    let up = Upstream::new(&[unlisted, metadata], &[id.names().veth_host]);
    let _s1 = up.serve(sock(unlisted, 8080), "unlisted");
    let _s2 = up.serve(sock(metadata, 80), "metadata");

    assert!(tcp_from(&net.netns, sock(unlisted, 8080)).is_err());
    assert!(tcp_from(&net.netns, sock(metadata, 80)).is_err());
    let is = |addr: Ipv4Addr, port: u16, reason: DropReason| {
        let id = id.clone();
        move |e: &DropEvent| {
            e.sandbox == id
                && e.reason == reason
                && e.dst == IpAddr::from(addr)
                && e.dst_port == Some(port)
        }
    };
    let mut events = read_until(&mut reader, is(unlisted, 8080, DropReason::Egress));
    events.extend(read_until(
        &mut reader,
        is(metadata, 80, DropReason::Always),
    ));
    let egress = events
        .iter()
        .find(|e| is(unlisted, 8080, DropReason::Egress)(e))
        .expect("egress drop logged");
    assert_eq!(egress.protocol, 6);
    assert_eq!(
        egress.src,
        IpAddr::from(net.link.as_ref().unwrap().sandbox_addr)
    );
    assert!(
        events.iter().any(is(metadata, 80, DropReason::Always)),
        "{events:?}"
    );

    let mut log = DropLog::new(16).unwrap();
    for event in events.into_iter().filter(|e| e.sandbox == id) {
        log.record(event, 0);
    }
    let snap = log.snapshot();
    assert!(
        snap.by_reason
            .iter()
            .any(|(r, n)| *r == DropReason::Egress && *n >= 1),
        "{snap:?}"
    );
    // The nft counters, the exact totals, saw at least as many as nflog delivered.
    let counted = mgr.dropped(&id, DropReason::Egress).unwrap()
        + mgr.dropped(&id, DropReason::Always).unwrap();
    assert!(counted >= snap.total, "{counted} < {}", snap.total);
}
