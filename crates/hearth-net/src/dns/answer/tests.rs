use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::Record;
use proptest::prelude::*;

use super::*;

fn grants() -> HashMap<String, Grant> {
    HashMap::from([
        (
            "api.example.com".to_owned(),
            Grant {
                any_port: false,
                ports: BTreeSet::from([443]),
            },
        ),
        (
            "open.example".to_owned(),
            Grant {
                any_port: true,
                ports: BTreeSet::new(),
            },
        ),
    ])
}

fn query(name: &str, kind: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    message
}

fn judged(message: &Message) -> Verdict {
    judge(&message.to_vec().unwrap(), &grants())
}

fn replied(verdict: Verdict) -> Message {
    match verdict {
        Verdict::Reply { message, .. } => message,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn unlisted_names_and_subdomains_get_nxdomain_with_their_question() {
    for name in [
        "other.example.com.",
        "x.api.example.com.",
        "example.com.",
        "api.example.com.evil.test.",
    ] {
        let asked = query(name, RecordType::A);
        let reply = replied(judged(&asked));
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert_eq!(reply.metadata.id, asked.metadata.id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries, asked.queries);
        assert!(reply.answers.is_empty());
    }
}

#[test]
fn allowed_a_queries_are_forwarded_lower_cased() {
    let Verdict::Forward(pending) = judged(&query("API.Example.COM.", RecordType::A)) else {
        panic!("allowed name was not forwarded");
    };
    assert_eq!(pending.name.to_ascii(), "api.example.com.");
    assert_eq!(pending.grant.ports, BTreeSet::from([443]));
    assert_eq!(pending.udp_limit, 512);
}

#[test]
fn other_types_of_allowed_names_get_nodata() {
    for kind in [RecordType::AAAA, RecordType::TXT, RecordType::HTTPS] {
        let reply = replied(judged(&query("open.example.", kind)));
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }
}

#[test]
fn a_label_holding_a_dot_never_matches_an_allowed_name() {
    let name = Name::from_labels(vec![b"api.example".as_slice(), b"com".as_slice()]).unwrap();
    let mut message = Message::query();
    message.add_query(Query::query(name, RecordType::A));
    let reply = replied(judged(&message));
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn responses_are_ignored_and_odd_queries_refused() {
    let mut response = query("api.example.com.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert!(matches!(judged(&response), Verdict::Ignore));

    let mut two = query("api.example.com.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("open.example.").unwrap(),
        RecordType::A,
    ));
    let reply = replied(judged(&two));
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let mut update = query("api.example.com.", RecordType::A);
    update.metadata.op_code = OpCode::Update;
    let reply = replied(judged(&update));
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn unparsable_queries_get_formerr_and_unparsable_responses_nothing() {
    let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0x3f; 20]);
    let reply = replied(judge(&junk, &grants()));
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    junk[2] |= 0x80;
    assert!(matches!(judge(&junk, &grants()), Verdict::Ignore));
    assert!(matches!(judge(&[], &grants()), Verdict::Ignore));
    assert!(matches!(judge(&[1, 2, 3], &grants()), Verdict::Ignore));
}

fn pending(name: &str, any_port: bool, ports: &[u16]) -> Pending {
    let request = query(name, RecordType::A);
    Pending {
        name: request.queries[0].name().to_lowercase(),
        request,
        grant: Grant {
            any_port,
            ports: ports.iter().copied().collect(),
        },
        udp_limit: 512,
    }
}

fn record(name: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, data)
}

const BOUNDS: TtlBounds = TtlBounds { min: 60, max: 3600 };

#[test]
fn the_cname_chain_is_followed_and_strangers_are_left_out() {
    let pending = pending("api.example.com.", true, &[443]);
    let mut upstream = reply(&pending.request, ResponseCode::NoError);
    let cdn = Name::from_ascii("edge.cdn.test.").unwrap();
    upstream.answers = vec![
        record("api.example.com.", 30, RData::CNAME(CNAME(cdn))),
        record(
            "edge.cdn.test.",
            5,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        ),
        record(
            "edge.cdn.test.",
            86_400,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 8))),
        ),
        record(
            "stranger.test.",
            300,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 99))),
        ),
        record(
            "api.example.com.",
            300,
            RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
        ),
    ];
    let (reply, elements) = from_upstream(&pending, &upstream, BOUNDS);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.metadata.id, pending.request.metadata.id);
    assert_eq!(reply.answers.len(), 3, "{:?}", reply.answers);
    assert_eq!(
        reply.answers[2].ttl, 3600,
        "TTLs given out are cut to the maximum"
    );
    let addr = Ipv4Addr::new(192, 0, 2, 7);
    let far = Ipv4Addr::new(192, 0, 2, 8);
    assert_eq!(
        elements,
        [
            SetElement::Any { addr, timeout: 60 },
            SetElement::Port {
                addr,
                port: 443,
                timeout: 60
            },
            SetElement::Any {
                addr: far,
                timeout: 3600
            },
            SetElement::Port {
                addr: far,
                port: 443,
                timeout: 3600
            },
        ]
    );
}

#[test]
fn upstream_failures_are_passed_on_without_elements() {
    let pending = pending("api.example.com.", false, &[443]);
    for (code, want) in [
        (ResponseCode::NXDomain, ResponseCode::NXDomain),
        (ResponseCode::ServFail, ResponseCode::ServFail),
        (ResponseCode::Refused, ResponseCode::ServFail),
    ] {
        let mut upstream = reply(&pending.request, code);
        upstream.answers = vec![record(
            "api.example.com.",
            300,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        )];
        let (reply, elements) = from_upstream(&pending, &upstream, BOUNDS);
        assert_eq!(reply.metadata.response_code, want);
        assert!(elements.is_empty() && reply.answers.is_empty());
    }
}

#[test]
fn udp_replies_too_large_are_truncated_to_the_question() {
    let pending = pending("open.example.", true, &[]);
    let mut message = reply(&pending.request, ResponseCode::NoError);
    for i in 0..60u8 {
        let addr = Ipv4Addr::new(192, 0, 2, i);
        message
            .answers
            .push(record("open.example.", 60, RData::A(A(addr))));
    }
    let full = encode(&message, None).unwrap();
    assert!(full.len() > 512);
    let cut = Message::from_vec(&encode(&message, Some(512)).unwrap()).unwrap();
    assert!(cut.metadata.truncation && cut.answers.is_empty());
    assert_eq!(cut.queries, message.queries);
}

proptest! {
    #[test]
    fn garbage_never_panics(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Verdict::Reply { message, udp_limit } = judge(&packet, &grants()) {
            prop_assert!(encode(&message, Some(udp_limit)).is_some());
        }
    }

    #[test]
    fn mutated_queries_never_panic(flip in 0usize..64, byte in any::<u8>()) {
        let mut packet = query("api.example.com.", RecordType::A).to_vec().unwrap();
        let at = flip % packet.len();
        packet[at] = byte;
        let _ = judge(&packet, &grants());
    }
}
