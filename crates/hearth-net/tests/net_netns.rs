//! Named network namespaces against the real kernel (needs root, like every `net_*` test).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use hearth_net::netns;

/// A namespace name unique to this test process and call, removed again on drop (also on panic).
struct NsGuard(String);

impl NsGuard {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(format!("hearth-test-{tag}-{}-{n}", std::process::id()))
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = netns::remove(&self.0);
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn ip_netns_names() -> Vec<String> {
    run("ip", &["netns", "list"])
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn create_makes_a_namespace_with_only_lo_up_and_remove_leaves_nothing() {
    let ns = NsGuard::new("life");
    let path = netns::create(&ns.0).expect("create");
    assert_eq!(path, netns::path(&ns.0));
    assert!(
        ip_netns_names().contains(&ns.0),
        "ip netns list lacks {}",
        ns.0
    );
    assert!(netns::exists(&ns.0).unwrap());

    let links = run("ip", &["-n", &ns.0, "-o", "link"]);
    let lines: Vec<&str> = links.lines().collect();
    assert_eq!(lines.len(), 1, "expected only lo, got:\n{links}");
    assert!(
        lines[0].contains(" lo: ") && lines[0].contains(",UP"),
        "lo not up: {links}"
    );

    netns::remove(&ns.0).expect("remove");
    assert!(!ip_netns_names().contains(&ns.0));
    assert!(!path.exists(), "{} still exists", path.display());
    assert!(!netns::exists(&ns.0).unwrap());
    netns::remove(&ns.0).expect("removing a missing namespace is not an error");
}

#[test]
fn create_is_idempotent_and_keeps_the_same_namespace() {
    let ns = NsGuard::new("idem");
    netns::create(&ns.0).expect("first create");
    // A link made in the namespace must survive a second create: it reuses, not replaces.
    run(
        "ip",
        &[
            "-n", &ns.0, "link", "add", "marker0", "type", "veth", "peer", "name", "marker1",
        ],
    );
    netns::create(&ns.0).expect("second create");
    let links = run("ip", &["-n", &ns.0, "-o", "link"]);
    assert!(
        links.contains("marker0"),
        "namespace was replaced:\n{links}"
    );
}

#[test]
fn create_replaces_a_bare_mount_point_left_by_a_crash() {
    let ns = NsGuard::new("crash");
    let path = netns::path(&ns.0);
    std::fs::create_dir_all(netns::NETNS_RUN_DIR).unwrap();
    std::fs::write(&path, b"").unwrap();
    assert!(
        !netns::exists(&ns.0).unwrap(),
        "a plain file is not a namespace"
    );
    netns::create(&ns.0).expect("create over a leftover file");
    assert!(netns::exists(&ns.0).unwrap());
    let links = run("ip", &["-n", &ns.0, "-o", "link"]);
    assert!(links.contains(",UP"), "lo not up: {links}");
}

#[test]
fn in_netns_runs_inside_and_leaves_the_caller_outside() {
    use std::os::unix::fs::MetadataExt;
    let ns = NsGuard::new("enter");
    let path = netns::create(&ns.0).unwrap();
    let own_ns = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let before = own_ns();
    let inside: Result<u64, netns::NetError> = netns::in_netns(&path, |_| Ok(own_ns()));
    assert_eq!(inside.unwrap(), std::fs::metadata(&path).unwrap().ino());
    assert_ne!(before, std::fs::metadata(&path).unwrap().ino());
    assert_eq!(
        own_ns(),
        before,
        "the calling thread must stay in its namespace"
    );
}

#[test]
fn bad_names_are_rejected_before_touching_anything() {
    for bad in ["", ".", "..", "a/b", "x\0y"] {
        let err = netns::create(bad).unwrap_err();
        assert!(
            matches!(err, netns::NetError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
        assert!(
            err.to_string().contains("invalid network namespace name"),
            "{err}"
        );
    }
}
