//! Reading the firewall's drops from nflog: the drop rules log to `log group N` (see
//! [`super::ruleset`]), and this socket receives each dropped packet's first bytes with the rule's
//! prefix `hearth:<sandbox id>:<reason>`, parsed into a [`DropEvent`].
//!
//! One socket per group and network namespace may bind it (the kernel answers EBUSY to a second),
//! so the daemon runs one reader and hands events to each sandbox's [`super::droplog::DropLog`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::errno::Errno;
use serde::Serialize;

use super::ruleset::DropReason;
use hearth_id::SandboxId;

/// How many bytes of each dropped packet the kernel copies: IPv6 + TCP headers fit.
const COPY_RANGE: u32 = 96;

// From <linux/netfilter/nfnetlink.h> and <linux/netfilter/nfnetlink_log.h>.
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Why the nflog reader failed.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot open an nflog socket for group {group}: {source}")]
    Socket { group: u16, source: io::Error },
    #[error("cannot {step} nflog group {group}: {source}")]
    Config {
        group: u16,
        step: &'static str,
        source: Errno,
    },
    #[error("cannot read nflog group {group}: {source}")]
    Recv { group: u16, source: io::Error },
}

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropEvent {
    pub sandbox: SandboxId,
    pub reason: DropReason,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// A socket bound to one nflog group.
#[derive(Debug)]
pub struct NflogReader {
    sock: Socket,
    group: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl NflogReader {
    /// Binds `group` in the calling thread's network namespace, asking for packet copies and
    /// immediate delivery (the kernel would otherwise batch up to 100 packets or one second).
    pub fn bind(group: u16) -> Result<Self, NflogError> {
        let socket_err = |source| NflogError::Socket { group, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(socket_err)?;
        sock.bind_auto().map_err(socket_err)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(socket_err)?;
        // Drops can come in floods; a full buffer loses packets (ENOBUFS), never blocks anyone.
        let _ = sock.set_rx_buf_sz(1 << 20);
        let mut reader = Self {
            sock,
            group,
            seq: 0,
            buf: Vec::with_capacity(1 << 16),
        };
        reader.configure("bind", NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND])?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend([NFULNL_COPY_PACKET, 0]);
        reader.configure("set the copy mode of", NFULA_CFG_MODE, &mode)?;
        reader.configure(
            "set the queue threshold of",
            NFULA_CFG_QTHRESH,
            &1u32.to_be_bytes(),
        )?;
        Ok(reader)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// Waits up to `timeout` for drops and returns those that came (possibly none). Packets that
    /// are not hearth's (another prefix) are skipped.
    pub fn recv(&mut self, timeout: Duration) -> Result<Vec<DropEvent>, NflogError> {
        let group = self.group;
        let ready = poll_readable(&self.sock, timeout)
            .map_err(|source| NflogError::Recv { group, source })?;
        if !ready {
            return Ok(Vec::new());
        }
        self.buf.clear();
        match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
            Ok(_) => Ok(parse_messages(&self.buf)),
            // ENOBUFS: the kernel dropped log messages; the counters in nft stay exact anyway.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => Ok(Vec::new()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
            Err(source) => Err(NflogError::Recv { group, source }),
        }
    }

    /// Sends one config message with a single attribute and waits for its ack.
    fn configure(&mut self, step: &'static str, attr: u16, value: &[u8]) -> Result<(), NflogError> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(64);
        let msg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
        msg.extend(0u32.to_ne_bytes()); // length, patched below
        msg.extend(msg_type.to_ne_bytes());
        msg.extend((NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend(self.seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes());
        // nfgenmsg: family AF_UNSPEC, version 0, resource id = the group (big-endian).
        msg.extend([0, 0]);
        msg.extend(self.group.to_be_bytes());
        push_attr(&mut msg, attr, value);
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        let group = self.group;
        let io_err = |e: io::Error| NflogError::Config {
            group,
            step,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        };
        self.sock.send(&msg, 0).map_err(io_err)?;
        loop {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0).map_err(io_err)?;
            for (kind, seq, body) in messages(&self.buf) {
                if kind == NLMSG_ERROR && seq == self.seq {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return match code {
                        0 => Ok(()),
                        code => Err(NflogError::Config {
                            group,
                            step,
                            source: Errno::from_raw(-code),
                        }),
                    };
                }
            }
        }
    }
}

fn push_attr(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    msg.extend(len.to_ne_bytes());
    msg.extend(kind.to_ne_bytes());
    msg.extend(value);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

fn poll_readable(sock: &Socket, timeout: Duration) -> io::Result<bool> {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        sock.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(err) => Err(io::Error::from(err)),
    }
}

/// Splits a netlink datagram into (type, sequence, body) triples.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let header = buf.get(offset..offset + NLMSG_HDRLEN)?;
        let len = usize::try_from(u32::from_ne_bytes([
            header[0], header[1], header[2], header[3],
        ]))
        .ok()?;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        let body = buf.get(offset + NLMSG_HDRLEN..offset + len.max(NLMSG_HDRLEN))?;
        offset += len.max(NLMSG_HDRLEN).next_multiple_of(4);
        Some((kind, seq, body))
    })
}

/// Every hearth drop in a datagram of nflog packet messages.
pub fn parse_messages(buf: &[u8]) -> Vec<DropEvent> {
    let packet = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
    messages(buf)
        .filter(|(kind, _, _)| *kind == packet)
        .filter_map(|(_, _, body)| parse_packet(body))
        .collect()
}

/// One nflog packet message body (nfgenmsg + attributes).
fn parse_packet(body: &[u8]) -> Option<DropEvent> {
    let (mut prefix, mut payload) = (None, None);
    let mut attrs = body.get(NFGENMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let value = attrs.get(4..len.max(4))?;
        match kind {
            NFULA_PREFIX => prefix = Some(value.split(|b| *b == 0).next().unwrap_or(value)),
            NFULA_PAYLOAD => payload = Some(value),
            NFULA_PACKET_HDR => {}
            _ => {}
        }
        attrs = attrs.get(len.max(4).next_multiple_of(4)..).unwrap_or(&[]);
    }
    let (sandbox, reason) = parse_prefix(std::str::from_utf8(prefix?).ok()?)?;
    let header = parse_ip(payload?)?;
    Some(DropEvent {
        sandbox,
        reason,
        protocol: header.protocol,
        src: header.src,
        dst: header.dst,
        src_port: header.ports.map(|p| p.0),
        dst_port: header.ports.map(|p| p.1),
    })
}

/// `hearth:<id>:<reason>`, as the ruleset writes it.
pub fn parse_prefix(prefix: &str) -> Option<(SandboxId, DropReason)> {
    let rest = prefix.trim_end().strip_prefix("hearth:")?;
    let (id, reason) = rest.rsplit_once(':')?;
    let reason = DropReason::ALL.into_iter().find(|r| r.as_str() == reason)?;
    Some((SandboxId::parse(id).ok()?, reason))
}

struct IpHeader {
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    ports: Option<(u16, u16)>,
}

/// The addresses, protocol and (TCP/UDP/SCTP) ports of an IP packet's first bytes.
fn parse_ip(packet: &[u8]) -> Option<IpHeader> {
    let (protocol, src, dst, l4) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                *packet.get(9)?,
                IpAddr::from(Ipv4Addr::from(src)),
                IpAddr::from(Ipv4Addr::from(dst)),
                packet.get(ihl..),
            )
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                *packet.get(6)?,
                IpAddr::from(Ipv6Addr::from(src)),
                IpAddr::from(Ipv6Addr::from(dst)),
                packet.get(40..),
            )
        }
        _ => return None,
    };
    let ports = match (protocol, l4) {
        (6 | 17 | 132, Some(l4)) if l4.len() >= 4 => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        _ => None,
    };
    Some(IpHeader {
        protocol,
        src,
        dst,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An nflog packet message as the kernel sends it: prefix and a TCP SYN's IPv4 + TCP headers.
    fn message(prefix: &str) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 231, 0, 2, 203, 0, 113, 20,
        ];
        ip.extend([0xc3, 0x50, 0x1f, 0x90]); // 50000 -> 8080
        ip.extend([0; 16]);
        let mut msg = vec![0; NLMSG_HDRLEN];
        msg[4..6].copy_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
        msg.extend([2, 0, 0x12, 0x67]);
        push_attr(&mut msg, NFULA_PACKET_HDR, &[8, 0, 2, 0]);
        let mut text = prefix.as_bytes().to_vec();
        text.push(0);
        push_attr(&mut msg, NFULA_PREFIX, &text);
        push_attr(&mut msg, NFULA_PAYLOAD, &ip);
        let len = u32::try_from(msg.len()).unwrap();
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        msg
    }

    #[test]
    fn parses_a_hearth_drop() {
        let mut buf = message("hearth:sb-1:egress");
        buf.extend(message("someone-else"));
        let events = parse_messages(&buf);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!((e.sandbox.as_str(), e.reason), ("sb-1", DropReason::Egress));
        assert_eq!(
            (e.protocol, e.src_port, e.dst_port),
            (6, Some(50000), Some(8080))
        );
        assert_eq!(e.dst, IpAddr::from(Ipv4Addr::new(203, 0, 113, 20)));
    }

    #[test]
    fn prefixes_round_trip_every_reason() {
        for reason in DropReason::ALL {
            let prefix = format!("hearth:a-b-c:{}", reason.as_str());
            assert_eq!(
                parse_prefix(&prefix),
                Some((SandboxId::parse("a-b-c").unwrap(), reason))
            );
        }
        assert_eq!(parse_prefix("hearth:bad_id:egress"), None);
        assert_eq!(parse_prefix("hearth:x:nonsense"), None);
    }

    #[test]
    fn truncated_input_is_skipped_not_a_panic() {
        let full = message("hearth:sb-1:egress");
        for cut in 0..full.len() {
            let _ = parse_messages(&full[..cut]);
        }
    }
}
