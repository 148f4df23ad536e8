//! `--net-rate` holds in both directions, within 20% (root needed). Traffic goes only between a
//! sandbox and a test host in a namespace this test makes (see `hearth_test_support::net`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hearth_net::{netns, NetPolicy, Rate};
use hearth_test_support::net::*;

const HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const SEND_FOR: Duration = Duration::from_secs(3);
/// Ignored at the start: the bucket's burst and TCP's slow start.
const WARMUP: Duration = Duration::from_millis(500);

/// Writes as fast as the socket takes it for `SEND_FOR`, then closes.
fn blast(mut stream: TcpStream) {
    let chunk = vec![0x5a; 64 * 1024];
    let end = Instant::now() + SEND_FOR;
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while Instant::now() < end {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
}

/// Reads to the end and returns the rate after the warm-up, in bits per second.
fn measure(mut stream: TcpStream) -> f64 {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0; 64 * 1024];
    let start = Instant::now();
    let (mut counted, mut first, mut last) = (0u64, None, start);
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        let now = Instant::now();
        if now - start >= WARMUP {
            first.get_or_insert(now);
            counted += n as u64;
            last = now;
        }
    }
    let secs = (last - first.expect("data after the warm-up")).as_secs_f64();
    counted as f64 * 8.0 / secs
}

fn listen(ns: &Path, addr: SocketAddr) -> TcpListener {
    netns::in_netns(ns, |_| Ok::<_, InNs>(TcpListener::bind(addr)?)).expect("listen")
}

fn connect(ns: &Path, addr: SocketAddr) -> TcpStream {
    netns::in_netns(ns, |_| {
        Ok::<_, InNs>(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?)
    })
    .expect("connect")
}

fn assert_near(measured: f64, rate: Rate, what: &str) {
    let want = rate.bits_per_sec() as f64;
    let ratio = measured / want;
    println!(
        "{what}: {:.2} Mbit/s for a limit of {rate} ({:.0}%)",
        measured / 1e6,
        ratio * 100.0
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "{what}: {measured:.0} bit/s vs {rate}"
    );
}

#[test]
fn rate_limit_holds_in_both_directions() {
    let rate = Rate::parse("10mbit").unwrap();
    let policy = NetPolicy {
        rate: Some(rate),
        ..NetPolicy::allowlist(&["203.0.113.10/32"]).unwrap()
    };
    let sb = Sandbox::new("rate", &policy);
    let up = Upstream::new(&[HOST], &[sb.veth()]);

    // Upload: the sandbox sends, the test host measures.
    let listener = listen(&up.path, sock(HOST, 9000));
    let sink = std::thread::spawn(move || measure(listener.accept().unwrap().0));
    blast(connect(&sb.net.netns, sock(HOST, 9000)));
    assert_near(sink.join().unwrap(), rate, "sandbox -> outside");

    // Download: the test host sends, the sandbox measures.
    let listener = listen(&up.path, sock(HOST, 9001));
    let source = std::thread::spawn(move || blast(listener.accept().unwrap().0));
    let measured = measure(connect(&sb.net.netns, sock(HOST, 9001)));
    source.join().unwrap();
    assert_near(measured, rate, "outside -> sandbox");
}
