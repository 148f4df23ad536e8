//! Setup + teardown latency of sandbox networking next to the `ip` + `nft` command reference.
//! Ignored by default (it measures; it asserts nothing about speed):
//! `cargo test -p hearth-net --release --test net_bench -- --ignored --nocapture`

use hearth_net::bench::bench_setup_teardown;

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn setup_teardown_latency() {
    let n = std::env::var("HEARTH_NET_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let prefix = format!("{}bench", hearth_test_support::net::scope());
    let report =
        bench_setup_teardown(hearth_test_support::net::manager(), n, &prefix).expect("benchmark");
    println!("{report}");
}
