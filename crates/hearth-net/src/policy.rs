//! What a sandbox may reach: its network mode and its allowlist, parsed once from `--net` and
//! `--allow` strings into typed values.
//!
//! `CIDR[:port]` rules are enforced by the sandbox's nft table. `domain[:port]` rules are
//! enforced by the sandbox's DNS resolver (`net::dns`): it answers only allowed names and adds
//! their addresses to the table's sets with timeouts, so a domain opens nothing until the sandbox
//! resolves it through hearth. Caveat: an allowed name's address may be shared (CDNs, virtual
//! hosts), so allowing `a.example.com` also allows whatever else answers on that address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Why a `--net` mode, an `--allow` string or a policy is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("empty --allow value; expected CIDR[:port] or domain[:port], e.g. 10.0.0.0/8:5432 or api.example.com:443")]
    Empty,
    #[error("--allow {input:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort { input: String, port: String },
    #[error("--allow {input:?}: {reason}")]
    BadAddress { input: String, reason: String },
    #[error("--allow {input:?}: {net} has host bits set; did you mean {network}?")]
    HostBits {
        input: String,
        net: IpNet,
        network: IpNet,
    },
    #[error("--allow {input:?}: {reason}; expected CIDR[:port] or domain[:port]")]
    BadDomain { input: String, reason: &'static str },
    #[error("--net {0:?}: expected none, gateway or allowlist")]
    BadMode(String),
    #[error("--allow needs --net allowlist (the mode is {mode})")]
    AllowWithoutAllowlist { mode: NetMode },
    #[error("--allow {rule}: sandboxes have no IPv6 connectivity yet, so IPv6 destinations cannot be allowed")]
    Ipv6Unsupported { rule: AllowRule },
    #[error("published port 0 is not a valid port")]
    PublishZero,
    #[error("--net-rate {input:?}: {reason}; expected e.g. 10mbit, 500kbit, 1gbit or 2mbps")]
    BadRate { input: String, reason: &'static str },
}

/// A destination the user allows: `CIDR[:port]` or `domain[:port]`. Without a port every port
/// and protocol is allowed; with one, TCP and UDP to that port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AllowRule {
    Net { net: IpNet, port: Option<u16> },
    Domain { name: String, port: Option<u16> },
}

impl AllowRule {
    /// Parses one `--allow` value: `10.0.0.0/8`, `10.1.2.3:443`, `[2001:db8::/32]:443`,
    /// `2001:db8::1`, `api.example.com`, `api.example.com:443`.
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PolicyError::Empty);
        }
        let (host, port) = split_port(trimmed, input)?;
        if let Some(net) = parse_net(host, input)? {
            return Ok(Self::Net { net, port });
        }
        let name = parse_domain(host, input)?;
        Ok(Self::Domain { name, port })
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Net { port, .. } | Self::Domain { port, .. } => *port,
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.port()) {
            (
                Self::Net {
                    net: IpNet::V6(net),
                    ..
                },
                Some(port),
            ) => write!(f, "[{net}]:{port}"),
            (Self::Net { net, .. }, Some(port)) => write!(f, "{net}:{port}"),
            (Self::Net { net, .. }, None) => write!(f, "{net}"),
            (Self::Domain { name, .. }, Some(port)) => write!(f, "{name}:{port}"),
            (Self::Domain { name, .. }, None) => f.write_str(name),
        }
    }
}

impl FromStr for AllowRule {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for AllowRule {
    type Error = PolicyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AllowRule> for String {
    fn from(rule: AllowRule) -> Self {
        rule.to_string()
    }
}

/// Splits `host:port`, `[v6]:port` and plain hosts. A bare IPv6 address has several colons and no
/// port; it needs brackets to carry one.
fn split_port<'a>(text: &'a str, input: &str) -> Result<(&'a str, Option<u16>), PolicyError> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            let reason = "'[' without a closing ']'".to_owned();
            return Err(PolicyError::BadAddress {
                input: input.to_owned(),
                reason,
            });
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(parse_port(port, input)?))),
                None => {
                    let reason = format!("unexpected {after:?} after ']'");
                    Err(PolicyError::BadAddress {
                        input: input.to_owned(),
                        reason,
                    })
                }
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            Ok((host, Some(parse_port(port, input)?)))
        }
        _ => Ok((text, None)),
    }
}

fn parse_port(port: &str, input: &str) -> Result<u16, PolicyError> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(PolicyError::BadPort {
            input: input.to_owned(),
            port: port.to_owned(),
        }),
        Ok(port) => Ok(port),
    }
}

/// `Some(net)` when `host` is an address or CIDR, `None` when it should be read as a domain name.
fn parse_net(host: &str, input: &str) -> Result<Option<IpNet>, PolicyError> {
    let bad = |reason: String| PolicyError::BadAddress {
        input: input.to_owned(),
        reason,
    };
    let net = if let Some((addr, len)) = host.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
        let len: u8 = len
            .parse()
            .map_err(|_| bad(format!("prefix length {len:?} is not a number")))?;
        IpNet::new(addr, len)
            .map_err(|_| bad(format!("prefix length /{len} is too long for {addr}")))?
    } else if let Ok(addr) = host.parse::<IpAddr>() {
        IpNet::from(addr)
    } else if host.contains(':') || looks_numeric(host) {
        return Err(bad(format!("{host:?} is not an IP address")));
    } else {
        return Ok(None);
    };
    if net.network() != net.addr() {
        let network = net.trunc();
        return Err(PolicyError::HostBits {
            input: input.to_owned(),
            net,
            network,
        });
    }
    Ok(Some(net))
}

/// Dotted numbers such as `10.0.0.256` are a mistyped address, not a domain name.
fn looks_numeric(host: &str) -> bool {
    host.rsplit('.')
        .next()
        .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a DNS name (RFC 1123 labels) and lower-cases it; a trailing dot is dropped.
fn parse_domain(host: &str, input: &str) -> Result<String, PolicyError> {
    let bad = |reason| PolicyError::BadDomain {
        input: input.to_owned(),
        reason,
    };
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.is_empty() {
        return Err(bad("the domain name is empty"));
    }
    if name.len() > 253 {
        return Err(bad("the domain name is longer than 253 characters"));
    }
    if name.contains('*') {
        return Err(bad("wildcard domains are not supported; list each name"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("the domain name has an empty label ('..')"));
        }
        if label.len() > 63 {
            return Err(bad(
                "a label of the domain name is longer than 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "a domain name may contain only letters, digits, '-' and '.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label of the domain name starts or ends with '-'"));
        }
    }
    Ok(name)
}

/// How much network a sandbox gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Only loopback: a namespace with no link out.
    None,
    /// hearth's gateway and DNS resolver on the host side, nothing else.
    #[default]
    Gateway,
    /// The gateway and resolver, plus the destinations in the allowlist.
    Allowlist,
}

impl fmt::Display for NetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Gateway => "gateway",
            Self::Allowlist => "allowlist",
        })
    }
}

impl FromStr for NetMode {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "gateway" => Ok(Self::Gateway),
            "allowlist" => Ok(Self::Allowlist),
            other => Err(PolicyError::BadMode(other.to_owned())),
        }
    }
}

/// The network policy of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPolicy {
    pub mode: NetMode,
    /// Destinations allowed beyond the gateway (only with [`NetMode::Allowlist`]).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Lets allowlisted private destinations through (RFC 1918, CGNAT, ULA, the host's own
    /// addresses). Link-local, loopback and other sandboxes stay denied regardless.
    #[serde(default)]
    pub allow_private: bool,
    /// TCP ports of the sandbox that may accept new connections from outside.
    #[serde(default)]
    pub publish: Vec<u16>,
    /// Bandwidth limit, applied to each direction separately (`--net-rate`).
    #[serde(default)]
    pub rate: Option<Rate>,
}

impl NetPolicy {
    /// A policy of `mode` with no allowlist.
    pub fn new(mode: NetMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// An allowlist policy from `--allow` strings.
    pub fn allowlist<S: AsRef<str>>(allow: &[S]) -> Result<Self, PolicyError> {
        let allow = allow
            .iter()
            .map(|s| AllowRule::parse(s.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            mode: NetMode::Allowlist,
            allow,
            ..Self::default()
        })
    }

    /// Checks what a parse alone cannot: the combination of mode and rules.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !self.allow.is_empty() && self.mode != NetMode::Allowlist {
            return Err(PolicyError::AllowWithoutAllowlist { mode: self.mode });
        }
        if let Some(rule) = self.allow.iter().find(|r| {
            matches!(
                r,
                AllowRule::Net {
                    net: IpNet::V6(_),
                    ..
                }
            )
        }) {
            return Err(PolicyError::Ipv6Unsupported { rule: rule.clone() });
        }
        if self.publish.contains(&0) {
            return Err(PolicyError::PublishZero);
        }
        Ok(())
    }

    /// The IPv4 networks (and optional ports) the nft table lets through.
    pub fn ipv4_rules(&self) -> impl Iterator<Item = (Ipv4Net, Option<u16>)> + '_ {
        self.allow.iter().filter_map(|rule| match rule {
            AllowRule::Net {
                net: IpNet::V4(net),
                port,
            } => Some((*net, *port)),
            _ => None,
        })
    }

    /// Whether any traffic of this sandbox must be forwarded past the host.
    pub fn needs_forwarding(&self) -> bool {
        self.mode == NetMode::Allowlist && !self.allow.is_empty()
    }
}

/// A bandwidth, in bits per second, written the way `tc` writes rates: `10mbit`, `500kbit`,
/// `1gbit`, `64000bit`, or in bytes per second as `2mbps`, `100kbps`. Prefixes are decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    bits_per_sec: u64,
}

impl Rate {
    /// The smallest rate accepted: below it a single full-size packet takes seconds.
    pub const MIN_BITS_PER_SEC: u64 = 8_000;

    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let bad = |reason| PolicyError::BadRate {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim().to_ascii_lowercase();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| bad("the unit is missing"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| bad("it does not start with a whole number"))?;
        let factor: u64 = match unit {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "bps" => 8,
            "kbps" => 8_000,
            "mbps" => 8_000_000,
            "gbps" => 8_000_000_000,
            _ => {
                return Err(bad(
                    "the unit is not one of bit, kbit, mbit, gbit, bps, kbps, mbps, gbps",
                ))
            }
        };
        let bits_per_sec = number
            .checked_mul(factor)
            .ok_or_else(|| bad("the rate is too large"))?;
        if bits_per_sec < Self::MIN_BITS_PER_SEC {
            return Err(bad("the rate is below 8kbit"));
        }
        Ok(Self { bits_per_sec })
    }

    pub fn bits_per_sec(self) -> u64 {
        self.bits_per_sec
    }

    pub fn bytes_per_sec(self) -> u64 {
        self.bits_per_sec / 8
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_sec;
        for (factor, unit) in [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ] {
            if bits.is_multiple_of(factor) {
                return write!(f, "{}{unit}", bits / factor);
            }
        }
        write!(f, "{bits}bit")
    }
}

impl FromStr for Rate {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Rate {
    type Error = PolicyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> Self {
        rate.to_string()
    }
}

/// Destinations no rule can open: "this" network, loopback, link-local (cloud metadata lives at
/// 169.254.169.254), multicast, and reserved space up to the broadcast address. Other sandboxes
/// are added from the configured pool.
pub const ALWAYS_DENIED_V4: [Ipv4Net; 5] = [
    net4(Ipv4Addr::new(0, 0, 0, 0), 8),
    net4(Ipv4Addr::new(127, 0, 0, 0), 8),
    net4(Ipv4Addr::new(169, 254, 0, 0), 16),
    net4(Ipv4Addr::new(224, 0, 0, 0), 4),
    net4(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 counterparts: loopback, link-local, multicast, and IPv4-mapped addresses (which would
/// otherwise be a way around the IPv4 rules).
pub const ALWAYS_DENIED_V6: [Ipv6Net; 4] = [
    net6(Ipv6Addr::LOCALHOST, 128),
    net6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    net6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    net6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
];

/// Denied unless the policy sets `allow_private`: RFC 1918 and CGNAT (RFC 6598).
pub const PRIVATE_V4: [Ipv4Net; 4] = [
    net4(Ipv4Addr::new(10, 0, 0, 0), 8),
    net4(Ipv4Addr::new(172, 16, 0, 0), 12),
    net4(Ipv4Addr::new(192, 168, 0, 0), 16),
    net4(Ipv4Addr::new(100, 64, 0, 0), 10),
];

/// Unique local addresses (RFC 4193), the IPv6 private range.
pub const PRIVATE_V6: [Ipv6Net; 1] = [net6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7)];

const fn net4(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(addr, len)
}

const fn net6(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(addr, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_addresses_and_ports() {
        let cases = [
            (
                "10.0.0.0/8:5432",
                AllowRule::Net {
                    net: net("10.0.0.0/8"),
                    port: Some(5432),
                },
            ),
            (
                "10.1.2.3",
                AllowRule::Net {
                    net: net("10.1.2.3/32"),
                    port: None,
                },
            ),
            (
                "203.0.113.7:443",
                AllowRule::Net {
                    net: net("203.0.113.7/32"),
                    port: Some(443),
                },
            ),
            (
                "0.0.0.0/0",
                AllowRule::Net {
                    net: net("0.0.0.0/0"),
                    port: None,
                },
            ),
            (
                "2001:db8::1",
                AllowRule::Net {
                    net: net("2001:db8::1/128"),
                    port: None,
                },
            ),
            (
                "[2001:db8::/32]:443",
                AllowRule::Net {
                    net: net("2001:db8::/32"),
                    port: Some(443),
                },
            ),
            (
                " api.Example.com.:443 ",
                AllowRule::Domain {
                    name: "api.example.com".into(),
                    port: Some(443),
                },
            ),
            (
                "localhost",
                AllowRule::Domain {
                    name: "localhost".into(),
                    port: None,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(AllowRule::parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "10.0.0.0/8:5432",
            "1.2.3.4/32",
            "[2001:db8::/32]:443",
            "a.example.com:80",
            "b.example",
        ] {
            let rule = AllowRule::parse(input).unwrap();
            assert_eq!(
                AllowRule::parse(&rule.to_string()).unwrap(),
                rule,
                "{input}"
            );
        }
    }

    #[test]
    fn bad_allow_strings_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty --allow value"),
            ("10.0.0.0/8:0", "port \"0\" is not a number from 1 to 65535"),
            ("10.0.0.0/8:99999", "port \"99999\""),
            ("host:http", "port \"http\""),
            ("10.0.0.0/33", "prefix length /33 is too long"),
            ("10.0.0.0/x", "prefix length \"x\" is not a number"),
            ("10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8?"),
            ("10.0.0.256", "\"10.0.0.256\" is not an IP address"),
            ("[2001:db8::1", "without a closing ']'"),
            ("[2001:db8::1]x", "unexpected \"x\" after ']'"),
            ("bad_name.com", "only letters, digits"),
            ("-a.com", "starts or ends with '-'"),
            ("a..com", "empty label"),
            ("*.example.com", "wildcard domains are not supported"),
        ];
        for (input, want) in cases {
            let msg = AllowRule::parse(input).unwrap_err().to_string();
            assert!(msg.contains(want), "{input:?}: {msg}");
        }
    }

    #[test]
    fn policy_validation() {
        let mut policy = NetPolicy::allowlist(&["10.0.0.0/8"]).unwrap();
        assert!(policy.validate().is_ok());
        policy.mode = NetMode::Gateway;
        assert!(matches!(
            policy.validate(),
            Err(PolicyError::AllowWithoutAllowlist { .. })
        ));
        let v6 = NetPolicy::allowlist(&["2001:db8::/32"]).unwrap();
        assert!(v6
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no IPv6 connectivity"));
        assert_eq!("allowlist".parse::<NetMode>().unwrap(), NetMode::Allowlist);
        assert!("open"
            .parse::<NetMode>()
            .unwrap_err()
            .to_string()
            .contains("none, gateway or allowlist"));
    }

    #[test]
    fn rates_parse_like_tc() {
        assert_eq!(Rate::parse("10mbit").unwrap().bits_per_sec(), 10_000_000);
        assert_eq!(Rate::parse("2MBps").unwrap().bytes_per_sec(), 2_000_000);
        assert_eq!(Rate::parse("1500kbit").unwrap().to_string(), "1500kbit");
        for (bad, says) in [
            ("10", "unit is missing"),
            ("mbit", "whole number"),
            ("10mb", "not one of"),
            ("1kbit", "below 8kbit"),
        ] {
            let msg = Rate::parse(bad).unwrap_err().to_string();
            assert!(msg.contains(says), "{bad}: {msg}");
        }
    }

    #[test]
    fn serde_uses_the_cli_syntax() {
        let policy = NetPolicy::allowlist(&["10.0.0.0/8:5432", "api.example.com"]).unwrap();
        let json = serde_json::to_string(&policy).unwrap();
        assert!(
            json.contains("\"10.0.0.0/8:5432\"") && json.contains("\"allowlist\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<NetPolicy>(&json).unwrap(), policy);
        assert!(serde_json::from_str::<AllowRule>("\"10.0.0.1/8\"").is_err());
    }
}
