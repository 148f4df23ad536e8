//! The supervisor's network duty end to end: a sandbox's allowed names resolve through hearth's
//! resolver and every other name gets NXDOMAIN; the firewall's drops reach `hearth sandbox
//! audit`. Traffic goes only to a DNS server on loopback and to another sandbox this test made.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{ok, run, stdout, Sandbox};
use hearth_test_support::net::test_dns;

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("JSON output")
}

#[test]
fn allowed_names_resolve_and_others_get_nxdomain() {
    // 198.18.0.0/15 is benchmarking space: nothing on a real network answers for it, and the
    // sandbox only looks the name up, it never connects.
    let answer = Ipv4Addr::new(198, 18, 200, 7);
    let dns = test_dns::TestDns::start(&[
        ("allowed.test", answer, 300),
        ("unlisted.test", Ipv4Addr::new(198, 18, 200, 8), 300),
    ]);
    let upstream = dns.addr.to_string();
    let sb = Sandbox::create(
        "rt-dns",
        &[
            "--net",
            "allowlist",
            "--allow",
            "allowed.test:443",
            "--dns-upstream",
            &upstream,
        ],
    );
    let probe = "import socket\n\
        for name in ('allowed.test', 'unlisted.test'):\n\
        \x20   try:\n\
        \x20       print(name, socket.gethostbyname(name))\n\
        \x20   except socket.gaierror as e:\n\
        \x20       print(name, 'error', e.errno)\n";
    let out = run(&["sandbox", "exec", &sb.id, "--", "python3", "-c", probe]);
    let text = stdout(&out);
    assert!(text.contains(&format!("allowed.test {answer}")), "{text}");
    // EAI_NONAME (-2) is NXDOMAIN; an unreachable resolver would give EAI_AGAIN (-3).
    assert!(text.contains("unlisted.test error -2"), "{text}");
    let asked = dns.asked();
    assert!(asked.iter().any(|n| n == "allowed.test."), "{asked:?}");
    assert!(
        !asked.iter().any(|n| n.starts_with("unlisted")),
        "an unlisted name must never reach upstream: {asked:?}"
    );
}

#[test]
fn firewall_drops_reach_the_audit() {
    let sb = Sandbox::create("rt-drops", &[]);
    let target = Sandbox::create("rt-drops-target", &[]);
    let target_addr = json(&["sandbox", "net", &target.id, "--json"])["link"]["sandbox_address"]
        .as_str()
        .expect("target address")
        .to_owned();
    let probe = format!(
        "import socket\ns = socket.socket(); s.settimeout(1)\ntry:\n    s.connect(('{target_addr}', 8000)); print('connected')\nexcept OSError as e:\n    print('blocked', type(e).__name__)"
    );
    let out = run(&["sandbox", "exec", &sb.id, "--", "python3", "-c", &probe]);
    assert!(stdout(&out).contains("blocked"), "{}", stdout(&out));

    // The supervisor reads nflog as drops happen; `audit` asks it to flush first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let drops = loop {
        let report = json(&["sandbox", "audit", &sb.id, "--json"]);
        let drops = report["network_drops"].clone();
        let seen = drops["by_destination"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["address"] == target_addr.as_str() && d["port"] == 8000)
        });
        if seen || Instant::now() > deadline {
            break drops;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let dest = drops["by_destination"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["address"] == target_addr.as_str() && d["port"] == 8000)
        })
        .unwrap_or_else(|| panic!("drop towards the other sandbox logged: {drops}"));
    assert_eq!(dest["protocol"], 6, "{drops}");
    assert!(dest["count"].as_u64().unwrap() >= 1, "{drops}");
    let recent = drops["recent"].as_array().expect("recent drops");
    let entry = recent
        .iter()
        .find(|e| e["destination"] == target_addr.as_str())
        .unwrap_or_else(|| panic!("recent drop listed: {drops}"));
    // Another sandbox is always denied, whatever the sandbox's allowlist says.
    assert_eq!(entry["reason"], "always", "{drops}");
    assert!(drops["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["reason"] == "always"));

    // The text report shows the same.
    let text = ok(&["sandbox", "audit", &sb.id]);
    assert!(text.contains(&format!("{target_addr}:8000")), "{text}");

    // A sandbox without a network has no drop log.
    let none = Sandbox::create("rt-drops-none", &["--net", "none"]);
    assert!(json(&["sandbox", "audit", &none.id, "--json"])["network_drops"].is_null());
}
