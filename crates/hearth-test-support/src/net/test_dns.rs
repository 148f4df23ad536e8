//! A DNS server on loopback standing in for the host's resolver in tests (shared by
//! hearth-net's `net_dns` tests and hearth's CLI tests).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

/// A DNS server on loopback standing in for the host's resolver: it answers the names it was
/// given and records every name it is asked.
pub struct TestDns {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestDns {
    /// `zone`: name -> (address, TTL).
    pub fn start(zone: &[(&str, Ipv4Addr, u32)]) -> Self {
        let zone: HashMap<String, (Ipv4Addr, u32)> = zone
            .iter()
            .map(|(name, addr, ttl)| (format!("{name}."), (*addr, *ttl)))
            .collect();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind test DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let query = Message::from_vec(&buf[..n]).expect("the resolver sends valid DNS");
                let name = query.queries[0].name().to_ascii();
                log.lock().unwrap().push(name.clone());
                let reply = zone_answer(&query, zone.get(&name).copied());
                let _ = sock.send_to(&reply.to_vec().unwrap(), from);
            }
        });
        Self {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn zone_answer(query: &Message, entry: Option<(Ipv4Addr, u32)>) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    match entry {
        Some((addr, ttl)) => {
            let name = query.queries[0].name().clone();
            reply
                .answers
                .push(Record::from_rdata(name, ttl, RData::A(A(addr))));
        }
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
