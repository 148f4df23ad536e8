//! A small synchronous rtnetlink client: links, addresses and routes in-process, a few
//! microseconds per call, where spawning `ip` costs milliseconds.
//!
//! A netlink socket talks to the namespace it was opened in, whatever thread later uses it, so a
//! socket for a sandbox's namespace is opened on a thread inside it ([`super::netns::in_netns`])
//! and then used from anywhere.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    DecodeError, DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use super::policy::Rate;

/// Why a link, address or route operation failed; each variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket ({place}): {source}")]
    Socket { place: String, source: io::Error },
    #[error("cannot {op} {object} ({place}): netlink I/O failed: {source}")]
    Io {
        op: &'static str,
        object: String,
        place: String,
        source: io::Error,
    },
    #[error("cannot {op} {object} ({place}): {source}")]
    Kernel {
        op: &'static str,
        object: String,
        place: String,
        source: Errno,
    },
    #[error("cannot {op} {object} ({place}): unreadable netlink reply: {source}")]
    Decode {
        op: &'static str,
        object: String,
        place: String,
        source: DecodeError,
    },
}

impl LinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { source, .. } => Some(*source),
            _ => None,
        }
    }
}

/// A link as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
}

/// An rtnetlink socket bound to one namespace.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    /// Where the socket points ("host" or the namespace path), for error messages.
    place: String,
    buf: Vec<u8>,
}

/// What a request is, for error messages.
struct Op<'a> {
    verb: &'static str,
    object: &'a str,
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace; `place` names that namespace in errors.
    pub fn open(place: &str) -> Result<Self, LinkError> {
        let socket_err = |source| LinkError::Socket {
            place: place.to_owned(),
            source,
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(socket_err)?;
        sock.bind_auto().map_err(socket_err)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(socket_err)?;
        // Extended acks make the kernel's refusals carry a reason; not having them is harmless.
        let _ = sock.set_ext_ack(true);
        Ok(Self {
            sock,
            seq: 0,
            place: place.to_owned(),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Creates the veth pair `host` (here) and `peer` (directly inside the namespace `peer_ns`, so
    /// it never appears here under a temporary name), both down.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        // Neither end can come up here: veth refuses to open before its peer is attached.
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::NetNsFd(peer_ns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        let op = Op {
            verb: "create veth",
            object: host,
        };
        self.exchange(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Brings link `index` up and sets its alias (`ip link set NAME up alias ALIAS`). The alias
    /// records the owner so reconciliation can tell whose a link is; the kernel ignores an alias
    /// given at creation, hence here.
    pub fn set_up(&mut self, index: u32, name: &str, alias: Option<&str>) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(alias) = alias {
            msg.attributes = vec![LinkAttribute::IfAlias(alias.to_owned())];
        }
        let op = Op {
            verb: "bring up",
            object: name,
        };
        self.exchange(&op, RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    /// Takes link `index` down: a veth whose end is down passes no packets either way.
    pub fn set_down(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        let op = Op {
            verb: "take down",
            object: name,
        };
        self.exchange(&op, RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    /// The index of link `name`, or `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        let op = Op {
            verb: "look up",
            object: name,
        };
        match self.exchange(&op, RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })),
            Err(err) if err.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Deletes link `name` (and so its veth peer); `false` if there was no such link.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        let op = Op {
            verb: "delete",
            object: name,
        };
        match self.exchange(&op, RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(err) if err.errno() == Some(Errno::ENODEV) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkSummary>, LinkError> {
        let op = Op {
            verb: "list",
            object: "links",
        };
        let replies = self.exchange(
            &op,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(summarize(link)),
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 address of the namespace, with the index of its link.
    pub fn ipv4_addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr)>, LinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let op = Op {
            verb: "list",
            object: "IPv4 addresses",
        };
        let replies = self.exchange(&op, RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        let mut found = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(addr) = reply else {
                continue;
            };
            for attr in addr.attributes {
                if let AddressAttribute::Local(std::net::IpAddr::V4(ip)) = attr {
                    found.push((addr.header.index, ip));
                }
            }
        }
        Ok(found)
    }

    /// Puts `addr/prefix_len` on link `index`, replacing an identical address (idempotent).
    pub fn replace_address(
        &mut self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        let mut msg = ipv4_address(index, addr, prefix_len);
        msg.header.scope = AddressScope::Universe;
        let op = Op {
            verb: "add an address to",
            object: name,
        };
        self.exchange(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Sets the default route to go via `gateway` on link `index`, replacing any other.
    pub fn replace_default_route(
        &mut self,
        index: u32,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
        ];
        let op = Op {
            verb: "add the default route",
            object: "via the host",
        };
        self.exchange(
            &op,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Limits what link `index` sends to `rate` with a token bucket (`tc qdisc replace dev NAME
    /// root tbf rate RATE burst B latency 50ms`). Egress is what a link can shape, so a sandbox's
    /// two directions are its two veth ends.
    pub fn replace_tbf(&mut self, index: u32, name: &str, rate: Rate) -> Result<(), LinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.handle = TcHandle { major: 1, minor: 0 };
        msg.header.parent = TcHandle::ROOT;
        msg.attributes = vec![
            TcAttribute::Kind("tbf".to_owned()),
            TcAttribute::Options(tbf_options(rate)),
        ];
        let op = Op {
            verb: "limit the rate of",
            object: name,
        };
        self.exchange(
            &op,
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Removes the root qdisc of link `index` (back to the default); none there is fine.
    pub fn delete_root_qdisc(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.parent = TcHandle::ROOT;
        let op = Op {
            verb: "remove the rate limit of",
            object: name,
        };
        match self.exchange(&op, RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
            Err(err) if matches!(err.errno(), Some(Errno::ENOENT | Errno::EINVAL)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Creates the bridge `name`, down (`ip link add NAME type bridge`).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        let op = Op {
            verb: "create bridge",
            object: name,
        };
        self.exchange(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Enslaves link `index` to the bridge `controller` (`ip link set NAME master BRIDGE`).
    pub fn set_controller(
        &mut self,
        index: u32,
        name: &str,
        controller: u32,
    ) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes = vec![LinkAttribute::Controller(controller)];
        let op = Op {
            verb: "add to a bridge",
            object: name,
        };
        self.exchange(&op, RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    /// Removes `addr/prefix_len` from link `index`; an address that is not there is fine.
    pub fn delete_address(
        &mut self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        let msg = ipv4_address(index, addr, prefix_len);
        let op = Op {
            verb: "remove an address from",
            object: name,
        };
        match self.exchange(&op, RouteNetlinkMessage::DelAddress(msg), 0) {
            Err(err) if err.errno() == Some(Errno::EADDRNOTAVAIL) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Sends one request and collects its replies until the ack (or the end of a dump).
    fn exchange(
        &mut self,
        op: &Op<'_>,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|source| self.io_err(op, source))?;

        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            self.sock
                .recv(&mut self.buf, 0)
                .map_err(|source| self.io_err(op, source))?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let len = NetlinkBuffer::new_checked(&self.buf[offset..])
                    .map(|b| b.length() as usize)
                    .map_err(|source| self.decode_err(op, source))?;
                let end = offset + len.max(16);
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &self.buf[offset..end.min(self.buf.len())],
                )
                .map_err(|source| self.decode_err(op, source))?;
                offset = end;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(err) => match err.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(LinkError::Kernel {
                                op: op.verb,
                                object: op.object.to_owned(),
                                place: self.place.clone(),
                                source: Errno::from_raw(-code.get()),
                            })
                        }
                    },
                    _ => {}
                }
            }
        }
    }

    fn io_err(&self, op: &Op<'_>, source: io::Error) -> LinkError {
        LinkError::Io {
            op: op.verb,
            object: op.object.to_owned(),
            place: self.place.clone(),
            source,
        }
    }

    fn decode_err(&self, op: &Op<'_>, source: DecodeError) -> LinkError {
        LinkError::Decode {
            op: op.verb,
            object: op.object.to_owned(),
            place: self.place.clone(),
            source,
        }
    }
}

/// The options of a `tbf` qdisc (TCA_TBF_* in <linux/pkt_sched.h>): rate, a burst of 100 ms of
/// traffic but at least 64 KiB (a GSO packet must fit, or tbf has to split every one), and a queue
/// of 50 ms on top of the burst.
fn tbf_options(rate: Rate) -> Vec<TcOption> {
    const TCA_TBF_PARMS: u16 = 1;
    const TCA_TBF_RATE64: u16 = 4;
    const TCA_TBF_BURST: u16 = 6;
    const TC_LINKLAYER_ETHERNET: u8 = 1;
    let bytes = rate.bytes_per_sec();
    let burst = u32::try_from((bytes / 10).max(64 * 1024)).unwrap_or(u32::MAX);
    let limit = u32::try_from(bytes / 20)
        .unwrap_or(u32::MAX)
        .saturating_add(burst);
    // struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate (bytes/s). An
    // Ethernet link layer tells the kernel no rate table follows.
    let mut parms = vec![0, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0];
    parms.extend(u32::try_from(bytes).unwrap_or(u32::MAX).to_ne_bytes());
    parms.extend([0; 12]); // peakrate: none
    parms.extend(limit.to_ne_bytes());
    parms.extend(0u32.to_ne_bytes()); // buffer: given in bytes as TCA_TBF_BURST instead
    parms.extend(0u32.to_ne_bytes()); // mtu: only for a peak rate
    let mut options = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, parms)),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ];
    if bytes > u64::from(u32::MAX) {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            bytes.to_ne_bytes().to_vec(),
        )));
    }
    options
}

fn summarize(link: LinkMessage) -> LinkSummary {
    let mut summary = LinkSummary {
        index: link.header.index,
        name: String::new(),
        alias: None,
    };
    for attr in link.attributes {
        match attr {
            LinkAttribute::IfName(name) => summary.name = name,
            LinkAttribute::IfAlias(alias) => summary.alias = Some(alias),
            _ => {}
        }
    }
    summary
}
/// `addr/prefix_len` on link `index` (local and address alike, as `ip addr add` sends it).
fn ipv4_address(index: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes = vec![
        AddressAttribute::Local(addr.into()),
        AddressAttribute::Address(addr.into()),
    ];
    msg
}
