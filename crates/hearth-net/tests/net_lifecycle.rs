//! Setup, teardown, failure and reconciliation of sandbox networking against the real kernel
//! (root needed). Every check is on what `ip netns`, `ip link` and `nft list tables` show.

use std::sync::Arc;

use hearth_id::SandboxId;
use hearth_net::{
    AddressPool, FirewallConfig, FirewallError, FirewallManager, MemorySlotStore, NetMode,
    NetPolicy, NftBackend, NftError, PolicyError,
};
use hearth_test_support::net::*;

/// A manager with its own store and its own small pool, for tests that break things.
fn private_manager(pool: &str, nft: NftBackend) -> FirewallManager {
    let config = FirewallConfig {
        pool: AddressPool::new(pool.parse().unwrap(), 30).unwrap(),
        nft,
        ..test_config()
    };
    FirewallManager::new(config, Arc::new(MemorySlotStore::new())).unwrap()
}

/// Tears `id` down on drop, for tests that do not use `Sandbox`.
struct Cleanup<'m>(&'m FirewallManager, Vec<SandboxId>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            let _ = self.0.teardown(id);
        }
    }
}

#[test]
fn teardown_leaves_zero_objects_and_can_be_repeated() {
    let id = unique_id("down");
    let _guard = Cleanup(manager(), vec![id.clone()]);
    manager()
        .setup(&id, &NetPolicy::allowlist(&["203.0.113.0/24"]).unwrap())
        .unwrap();
    assert_eq!(
        leftovers(&id).len(),
        3,
        "netns, veth and table exist: {:?}",
        leftovers(&id)
    );
    manager().teardown(&id).unwrap();
    // At once: the namespace and table are gone and the veth is down (dead both ways).
    let left = leftovers(&id);
    assert!(left.iter().all(|l| l.starts_with("link ")), "{left:?}");
    let state = sh(&["ip", "-o", "link", "show"]);
    let veth = id.names().veth_host;
    assert!(
        state
            .lines()
            .filter(|l| l.contains(&veth))
            .all(|l| !l.contains(",UP")),
        "{state}"
    );
    // Soon after, the kernel has removed the pair along with the namespace.
    assert_eq!(leftovers_after_reap(&id), Vec::<String>::new());
    manager()
        .teardown(&id)
        .expect("tearing down what is gone is fine");
}

#[test]
fn setup_is_idempotent() {
    let sb = Sandbox::new("idem", &NetPolicy::default());
    let again = manager().setup(&sb.id, &NetPolicy::default()).unwrap();
    assert_eq!(again, sb.net);
    let drops = manager()
        .counters(&sb.id)
        .unwrap()
        .into_iter()
        .filter(|c| c.comment == "drop egress")
        .count();
    assert_eq!(drops, 1, "the table was replaced, not added to");
    let addrs = sh(&[
        "ip",
        "-n",
        &sb.id.names().netns,
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
}

#[test]
fn distinct_sandboxes_get_distinct_slots() {
    let a = Sandbox::new("slot-a", &NetPolicy::default());
    let b = Sandbox::new("slot-b", &NetPolicy::default());
    assert_ne!(
        a.net.link.as_ref().unwrap().subnet,
        b.net.link.as_ref().unwrap().subnet
    );
}

#[test]
fn mode_none_has_only_loopback_and_removes_an_earlier_link() {
    let sb = Sandbox::new("none", &NetPolicy::default());
    let none = manager()
        .setup(&sb.id, &NetPolicy::new(NetMode::None))
        .unwrap();
    assert!(none.link.is_none());
    let links = sh(&["ip", "-n", &sb.id.names().netns, "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert_eq!(
        leftovers(&sb.id),
        vec![format!("netns {}", sb.id.names().netns)]
    );
}

#[test]
fn failing_nft_leaves_no_half_made_sandbox() {
    let mgr = private_manager(
        "10.238.0.0/24",
        NftBackend::Command("/nonexistent/nft".into()),
    );
    let id = unique_id("nonft");
    let _guard = Cleanup(&mgr, vec![id.clone()]);
    let err = mgr.setup(&id, &NetPolicy::default()).unwrap_err();
    assert!(
        matches!(err, FirewallError::Nft(NftError::Spawn { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
    assert_eq!(leftovers_after_reap(&id), Vec::<String>::new());
}

#[test]
fn exhausted_pool_is_a_clear_error_and_leaves_nothing() {
    let mgr = private_manager("10.238.1.0/30", NftBackend::Auto);
    let (first, second) = (unique_id("full-a"), unique_id("full-b"));
    let _guard = Cleanup(&mgr, vec![first.clone(), second.clone()]);
    mgr.setup(&first, &NetPolicy::default()).unwrap();
    let err = mgr.setup(&second, &NetPolicy::default()).unwrap_err();
    assert!(
        err.to_string().contains("pool 10.238.1.0/30 is exhausted"),
        "{err}"
    );
    assert_eq!(leftovers_after_reap(&second), Vec::<String>::new());
    mgr.teardown(&first).unwrap();
    // The slot's address stays on the (down) veth until the kernel reaps it with the namespace;
    // only then is the slot free again.
    assert_eq!(leftovers_after_reap(&first), Vec::<String>::new());
    mgr.setup(&second, &NetPolicy::default())
        .expect("the released slot is reused");
}

#[test]
fn bad_policies_are_rejected_before_anything_is_made() {
    let id = unique_id("badpol");
    let mut policy = NetPolicy::allowlist(&["10.0.0.0/8"]).unwrap();
    policy.mode = NetMode::Gateway;
    let err = manager().setup(&id, &policy).unwrap_err();
    assert!(
        matches!(
            err,
            FirewallError::Policy(PolicyError::AllowWithoutAllowlist { .. })
        ),
        "{err}"
    );
    assert_eq!(leftovers(&id), Vec::<String>::new());

    for (bad, says) in [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ("api.example.com:http", "is not a number from 1 to 65535"),
        ("300.1.1.1", "is not an IP address"),
    ] {
        let err = NetPolicy::allowlist(&[bad]).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn reconcile_removes_what_crashed_setups_left_and_keeps_live_sandboxes() {
    let live = Sandbox::new("rc-live", &NetPolicy::default());
    // Crash after a complete setup: nothing was torn down.
    let done = unique_id("rc-done");
    manager().setup(&done, &NetPolicy::default()).unwrap();
    // Crash in the middle of a setup made the old way, with commands: namespace, veth (still in
    // the host namespace under its temporary name) and an empty table.
    let half = unique_id("rc-half");
    let names = half.names();
    let _guard = Cleanup(manager(), vec![done.clone(), half.clone()]);
    hearth_net::netns::create(&names.netns).unwrap();
    sh(&[
        "ip",
        "link",
        "add",
        &names.veth_host,
        "type",
        "veth",
        "peer",
        "name",
        &names.veth_peer,
    ]);
    sh(&[
        "ip",
        "link",
        "set",
        &names.veth_host,
        "alias",
        &format!("hearth:{half}"),
    ]);
    sh(&["nft", "add", "table", "inet", &names.nft_table]);
    assert_eq!(leftovers(&half).len(), 4, "{:?}", leftovers(&half));

    let report = manager()
        .reconcile_where(std::slice::from_ref(&live.id), in_scope("rc-"))
        .unwrap();
    assert_eq!(leftovers(&done), Vec::<String>::new());
    assert_eq!(leftovers(&half), Vec::<String>::new());
    assert_eq!(
        leftovers(&live.id).len(),
        3,
        "the live sandbox is untouched"
    );
    assert!(report.slots.contains(&done), "{report:?}");
    assert!(
        report.tables.contains(&names.nft_table) && report.namespaces.contains(&names.netns),
        "{report:?}"
    );
    assert!(report.links.contains(&names.veth_host), "{report:?}");

    let again = manager()
        .reconcile_where(std::slice::from_ref(&live.id), in_scope("rc-"))
        .unwrap();
    assert!(again.is_empty(), "nothing left to do: {again:?}");
}
