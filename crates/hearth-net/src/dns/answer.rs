//! Deciding what to do with one query, and turning an upstream answer into the sandbox's reply
//! plus the set elements it opens. No I/O here, so all of it is testable on bytes.

use std::collections::{HashMap, HashSet};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::config::Grant;
use super::nftset::SetElement;

/// The largest UDP payload offered and accepted with EDNS (the 2020 DNS flag day figure, which
/// avoids IP fragmentation on common paths).
pub(super) const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP limit of a client without EDNS (RFC 1035).
const PLAIN_UDP_PAYLOAD: usize = 512;
/// CNAME links followed from the asked name; longer chains leave the rest unanswered.
const MAX_CNAME_HOPS: usize = 8;

/// What to do with one incoming packet.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Not a query (a response, or garbage without a usable header): no reply at all, so two
    /// resolvers can never bounce packets between each other.
    Ignore,
    /// Answer at once, without asking upstream.
    Reply { message: Message, udp_limit: usize },
    /// An allowed name of type A: ask upstream.
    Forward(Pending),
}

/// An allowed A query waiting for upstream's answer.
#[derive(Debug)]
pub(super) struct Pending {
    pub request: Message,
    /// The asked name, lower-cased: what is forwarded upstream.
    pub name: Name,
    pub grant: Grant,
    pub udp_limit: usize,
}

/// Decides what `packet` gets, from the sandbox's rules alone.
pub(super) fn judge(packet: &[u8], grants: &HashMap<String, Grant>) -> Verdict {
    let Ok(request) = Message::from_vec(packet) else {
        return garbage(packet);
    };
    if request.metadata.message_type != MessageType::Query {
        return Verdict::Ignore;
    }
    let udp_limit = udp_limit(&request);
    let reply = |code| Verdict::Reply {
        message: reply(&request, code),
        udp_limit,
    };
    if request.metadata.op_code != OpCode::Query {
        return reply(ResponseCode::NotImp);
    }
    let [query] = request.queries.as_slice() else {
        return reply(ResponseCode::FormErr);
    };
    let Some(grant) = allowed_key(query.name()).and_then(|key| grants.get(&key)) else {
        return reply(ResponseCode::NXDomain);
    };
    if query.query_class() != DNSClass::IN || query.query_type() != RecordType::A {
        // Allowed, but only addresses are served: NODATA.
        return reply(ResponseCode::NoError);
    }
    let name = query.name().to_lowercase();
    Verdict::Forward(Pending {
        grant: grant.clone(),
        name,
        udp_limit,
        request,
    })
}

/// FORMERR for a packet that does not parse but has a query's header; nothing otherwise.
fn garbage(packet: &[u8]) -> Verdict {
    let is_query = packet.len() >= 12 && packet[2] & 0x80 == 0;
    if !is_query {
        return Verdict::Ignore;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    Verdict::Reply {
        message: Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
        udp_limit: PLAIN_UDP_PAYLOAD,
    }
}

/// The name as a rule key, if every label is made of the characters a rule can hold: a label
/// with a dot or other bytes inside can then never pass for an allowed name.
fn allowed_key(name: &Name) -> Option<String> {
    let mut key = String::with_capacity(name.len());
    for label in name.iter() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    Some(key)
}

/// How large a UDP reply to `request` may be.
fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(PLAIN_UDP_PAYLOAD, |edns| {
        usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD))
    })
}

/// An empty reply to `request` with `code`, echoing its question (and EDNS, if it used it).
pub(super) fn reply(request: &Message, code: ResponseCode) -> Message {
    let mut message = Message::response(request.metadata.id, request.metadata.op_code);
    message.metadata.recursion_desired = request.metadata.recursion_desired;
    message.metadata.recursion_available = true;
    message.metadata.checking_disabled = request.metadata.checking_disabled;
    message.metadata.response_code = code;
    message.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        message.edns = Some(edns);
    }
    message
}

/// TTL bounds: element timeouts are clamped into `min..=max`, TTLs given out cut to `max`.
#[derive(Debug, Clone, Copy)]
pub(super) struct TtlBounds {
    pub min: u32,
    pub max: u32,
}

/// The sandbox's reply to `pending` from upstream's answer, and the set elements it opens: the
/// A records of the asked name's CNAME chain. Everything else upstream said is left out.
pub(super) fn from_upstream(
    pending: &Pending,
    upstream: &Message,
    ttl: TtlBounds,
) -> (Message, Vec<SetElement>) {
    match upstream.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return (reply(&pending.request, ResponseCode::NXDomain), vec![]),
        _ => return (reply(&pending.request, ResponseCode::ServFail), vec![]),
    }
    let chain = cname_chain(&pending.name, upstream);
    let mut message = reply(&pending.request, ResponseCode::NoError);
    let mut elements = Vec::new();
    for record in &upstream.answers {
        if record.dns_class != DNSClass::IN || !chain.contains(&canonical(&record.name)) {
            continue;
        }
        match &record.data {
            RData::A(a) => {
                let timeout = record.ttl.clamp(ttl.min, ttl.max);
                if pending.grant.any_port {
                    elements.push(SetElement::Any { addr: a.0, timeout });
                }
                elements.extend(pending.grant.ports.iter().map(|&port| SetElement::Port {
                    addr: a.0,
                    port,
                    timeout,
                }));
            }
            RData::CNAME(_) => {}
            _ => continue,
        }
        let mut kept = record.clone();
        kept.ttl = kept.ttl.min(ttl.max);
        message.answers.push(kept);
    }
    (message, elements)
}

/// The asked name and the names it is an alias of, following upstream's CNAME records.
fn cname_chain(name: &Name, upstream: &Message) -> HashSet<String> {
    let mut chain = HashSet::from([canonical(name)]);
    for _ in 0..MAX_CNAME_HOPS {
        let before = chain.len();
        for record in &upstream.answers {
            if let RData::CNAME(target) = &record.data {
                if chain.contains(&canonical(&record.name)) {
                    chain.insert(canonical(&target.0));
                }
            }
        }
        if chain.len() == before {
            break;
        }
    }
    chain
}

/// A comparable form of any name (escapes keep odd labels distinct).
fn canonical(name: &Name) -> String {
    let text = name.to_lowercase().to_ascii();
    match text.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        _ => text,
    }
}

/// `message` as UDP bytes of at most `limit`: if it does not fit, the question alone with TC
/// set, so the client retries over TCP. `None` only if even that cannot be encoded.
pub(super) fn encode(message: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = match message.to_vec() {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(error = %err, "cannot encode a DNS reply; answering SERVFAIL");
            let mut failed = message.truncate();
            failed.metadata.truncation = false;
            failed.metadata.response_code = ResponseCode::ServFail;
            return failed.to_vec().ok();
        }
    };
    match limit {
        Some(limit) if bytes.len() > limit => message.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

#[cfg(test)]
mod tests;
