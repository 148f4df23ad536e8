//! The sandbox's DNS resolver against the real kernel (root needed): an allowed name resolves and
//! opens its address in the sandbox's nft set, any other name gets NXDOMAIN without reaching
//! upstream. Upstream is a test DNS server on loopback; the addresses it hands out belong to test
//! hosts in namespaces these tests make (see `hearth_test_support::net`), never to a real network.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hearth_net::{netns, DropReason, NetPolicy, ResolverConfig, ResolverHandle, SandboxResolver};
use hearth_test_support::net::test_dns::TestDns;
use hearth_test_support::net::*;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

const API: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const ANY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// A sandbox with `allow`, its resolver on its host-side address, and a test upstream.
struct Setup {
    sb: Sandbox,
    upstream: TestDns,
    resolver: ResolverHandle,
}

impl Setup {
    fn new(tag: &str, allow: &[&str], zone: &[(&str, Ipv4Addr, u32)]) -> Self {
        let policy = NetPolicy::allowlist(allow).unwrap();
        let sb = Sandbox::new(tag, &policy);
        let upstream = TestDns::start(zone);
        let link = sb.net.link.as_ref().expect("link");
        let config = ResolverConfig::for_sandbox(link, &policy, upstream.addr);
        let resolver = SandboxResolver::start(config).expect("start resolver");
        assert_eq!(resolver.local_addr(), sock(sb.host_addr(), DNS_PORT));
        Self {
            sb,
            upstream,
            resolver,
        }
    }

    /// Asks the resolver from inside the sandbox, over UDP or TCP.
    fn query(&self, name: &str, kind: RecordType, tcp: bool) -> Message {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let bytes = query.to_vec().unwrap();
        let to = self.resolver.local_addr();
        let raw = if tcp {
            self.exchange_tcp(&bytes, to)
        } else {
            self.exchange_udp(&bytes, to)
        }
        .unwrap_or_else(|err| panic!("query {name} {kind} over tcp={tcp}: {err}"));
        let reply = Message::from_vec(&raw).expect("a valid reply");
        assert_eq!(reply.metadata.id, query.metadata.id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries, query.queries);
        reply
    }

    fn exchange_udp(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<Vec<u8>> {
        let sock = self.udp_socket()?;
        sock.send_to(packet, to)?;
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok(buf[..n].to_vec())
    }

    fn exchange_tcp(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut stream = self.tcp_stream(to)?;
        let len = u16::try_from(packet.len()).unwrap().to_be_bytes();
        stream.write_all(&[&len[..], packet].concat())?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply)?;
        Ok(reply)
    }

    fn udp_socket(&self) -> std::io::Result<UdpSocket> {
        let sock = netns::in_netns(&self.sb.net.netns, |_| {
            Ok::<_, InNs>(UdpSocket::bind("0.0.0.0:0")?)
        })?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(sock)
    }

    fn tcp_stream(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = netns::in_netns(&self.sb.net.netns, |_| {
            Ok::<_, InNs>(TcpStream::connect_timeout(&to, Duration::from_secs(2))?)
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    }

    fn nft_set(&self, set: &str) -> String {
        let table = self.sb.id.names().nft_table;
        sh(&["nft", "list", "set", "inet", &table, set])
    }
}

fn addresses(reply: &Message) -> Vec<(Ipv4Addr, u32)> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        })
        .collect()
}

#[test]
fn allowed_name_resolves_and_opens_only_its_port_other_names_get_nxdomain() {
    let s = Setup::new(
        "dns-allow",
        &["api.test.example:8080", "any.test.example"],
        &[
            ("api.test.example", API, 5),
            ("any.test.example", ANY, 7200),
        ],
    );
    let up = Upstream::new(&[API, ANY], &[s.sb.veth()]);
    let api = up.serve(sock(API, 8080), "api");
    let api_other_port = up.serve(sock(API, 9090), "api-9090");
    let _any = up.serve(sock(ANY, 9090), "any");

    // Before the name is resolved the address is closed: the set, not the policy, opens it.
    assert!(s.sb.connect(sock(API, 8080)).is_err());

    let reply = s.query("API.test.example.", RecordType::A, false);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), [(API, 5)]);
    assert!(s.sb.connect(sock(API, 8080)).unwrap().ends_with("api"));
    assert!(
        s.sb.connect(sock(API, 9090)).is_err(),
        "a domain:port rule opens only that port"
    );
    assert_eq!((api.hits(), api_other_port.hits()), (1, 0));

    // A bare domain opens every port; its long TTL is cut to the one-hour maximum.
    let reply = s.query("any.test.example.", RecordType::A, true);
    assert_eq!(addresses(&reply), [(ANY, 3600)]);
    assert!(s.sb.connect(sock(ANY, 9090)).unwrap().ends_with("any"));

    // The elements carry timeouts: the 5 s TTL raised to the 60 s floor, 7200 s cut to 1 h.
    let ported = s.nft_set("dns_port_v4");
    assert!(
        ported.contains("203.0.113.10 . 8080 timeout 1m"),
        "{ported}"
    );
    let any = s.nft_set("dns_any_v4");
    assert!(any.contains("203.0.113.11 timeout 1h"), "{any}");

    for name in [
        "other.test.example.",
        "x.api.test.example.",
        "6578666974726174696f6e.test.example.",
    ] {
        for tcp in [false, true] {
            let reply = s.query(name, RecordType::A, tcp);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
            assert!(reply.answers.is_empty());
        }
    }
    let aaaa = s.query("api.test.example.", RecordType::AAAA, false);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty(), "no IPv6 answers: {aaaa:?}");

    // Upstream saw the two allowed A queries, lower-cased, and nothing else.
    assert_eq!(
        s.upstream.asked(),
        ["api.test.example.", "any.test.example."]
    );
    let stats = s.resolver.stats();
    assert_eq!((stats.answered, stats.denied), (2, 6), "{stats:?}");
}

#[test]
fn garbage_does_not_kill_the_resolver() {
    let s = Setup::new(
        "dns-junk",
        &["api.test.example:8080"],
        &[("api.test.example", API, 300)],
    );
    let to = s.resolver.local_addr();
    let sock = s.udp_socket().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut response = Message::response(7, hickory_proto::op::OpCode::Query);
    response.add_query(Query::query(
        Name::from_ascii("api.test.example.").unwrap(),
        RecordType::A,
    ));
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c,
        ],
        // Longer than any query, with the response bit set (its third byte is 0x82).
        (0..=255u8).cycle().skip(128).take(3000).collect(),
        response.to_vec().unwrap(),
    ];
    for packet in &junk {
        sock.send_to(packet, to).unwrap();
    }
    // Only the parseable-header query gets an answer: FORMERR for its id.
    let mut buf = [0u8; 1500];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("FORMERR for a broken query");
    let formerr = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(formerr.metadata.id, 0x1234);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    assert!(sock.recv_from(&mut buf).is_err(), "nothing for the rest");

    // TCP: a length that is too long, and a connection that sends half a message and goes.
    let mut long = s.tcp_stream(to).unwrap();
    long.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(long.read_to_end(&mut rest).unwrap_or(0), 0);
    let mut half = s.tcp_stream(to).unwrap();
    half.write_all(&[0, 40, 1, 2]).unwrap();
    drop(half);

    for tcp in [false, true] {
        let reply = s.query("api.test.example.", RecordType::A, tcp);
        assert_eq!(addresses(&reply), [(API, 300)], "still serving (tcp={tcp})");
    }
    assert!(
        s.resolver.stats().malformed >= 4,
        "{:?}",
        s.resolver.stats()
    );
    assert_eq!(s.upstream.asked().len(), 2);
}

#[test]
fn an_answer_pointing_at_a_denied_address_stays_denied() {
    let s = Setup::new(
        "dns-meta",
        &["meta.test.example"],
        &[("meta.test.example", METADATA, 300)],
    );
    let up = Upstream::new(&[METADATA], &[s.sb.veth()]);
    let metadata = up.serve(sock(METADATA, 80), "metadata");

    let reply = s.query("meta.test.example.", RecordType::A, false);
    assert_eq!(addresses(&reply), [(METADATA, 300)]);
    assert!(s.nft_set("dns_any_v4").contains("169.254.169.254"));
    assert!(s.sb.connect(sock(METADATA, 80)).is_err());
    assert!(manager().dropped(&s.sb.id, DropReason::Always).unwrap() > 0);
    assert_eq!(metadata.hits(), 0);

    // The reply waits for the set: with the sandbox's table gone there is nothing to open, and
    // the sandbox gets SERVFAIL rather than an address it could not reach.
    sh(&["nft", "delete", "table", "inet", &s.sb.id.names().nft_table]);
    let reply = s.query("meta.test.example.", RecordType::A, false);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
    assert_eq!(s.resolver.stats().failed, 1);
}
