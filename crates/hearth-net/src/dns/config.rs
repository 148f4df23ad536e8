//! What one sandbox's resolver needs to know, and where the host's upstream resolver is.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::DnsError;
use crate::firewall::SandboxLink;
use crate::nft::NftBackend;
use crate::policy::{AllowRule, NetPolicy};

/// The host's resolver configuration, read for the default upstream.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// One `domain[:port]` rule: `port: None` allows every port of the answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainRule {
    pub name: String,
    pub port: Option<u16>,
}

impl DomainRule {
    /// The domain rules of `policy` (its CIDR rules are the nft table's business).
    pub fn from_policy(policy: &NetPolicy) -> Vec<Self> {
        policy
            .allow
            .iter()
            .filter_map(|rule| match rule {
                AllowRule::Domain { name, port } => Some(Self {
                    name: name.clone(),
                    port: *port,
                }),
                AllowRule::Net { .. } => None,
            })
            .collect()
    }
}

/// Settings of one sandbox's resolver.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Where the sandbox sends its queries: its host-side address and the firewall's `dns_port`.
    pub listen: SocketAddr,
    /// The resolver queries for allowed names are forwarded to.
    pub upstream: SocketAddr,
    /// The sandbox's nft table (inet family), holding the DNS answer sets.
    pub table: String,
    pub rules: Vec<DomainRule>,
    pub nft: NftBackend,
    /// Shortest life of a set element, in seconds, whatever the answer's TTL.
    pub min_ttl: u32,
    /// Longest life of a set element and longest TTL handed to the sandbox, in seconds.
    pub max_ttl: u32,
    /// Queries answered at once; more are dropped (the client retries) rather than queued.
    pub max_in_flight: usize,
    /// TCP connections open at once; more are closed at accept.
    pub max_tcp_connections: usize,
    /// How long one upstream exchange may take.
    pub upstream_timeout: Duration,
    /// Queries answered per second, on average (bursts up to a second's worth); more are
    /// dropped unanswered, so a flood costs the host a bounded amount of work.
    pub max_queries_per_second: u32,
}

impl ResolverConfig {
    pub const DEFAULT_MIN_TTL: u32 = 60;
    pub const DEFAULT_MAX_TTL: u32 = 3600;

    /// Defaults for everything but the four things that differ per sandbox.
    pub fn new(
        listen: SocketAddr,
        upstream: SocketAddr,
        table: impl Into<String>,
        rules: Vec<DomainRule>,
    ) -> Self {
        Self {
            listen,
            upstream,
            table: table.into(),
            rules,
            nft: NftBackend::Auto,
            min_ttl: Self::DEFAULT_MIN_TTL,
            max_ttl: Self::DEFAULT_MAX_TTL,
            max_in_flight: 64,
            max_tcp_connections: 16,
            upstream_timeout: Duration::from_secs(3),
            max_queries_per_second: 200,
        }
    }

    /// The resolver of a sandbox set up by [`crate::FirewallManager`] with `policy`.
    pub fn for_sandbox(link: &SandboxLink, policy: &NetPolicy, upstream: SocketAddr) -> Self {
        Self::new(
            link.resolver(),
            upstream,
            link.nft_table.clone(),
            DomainRule::from_policy(policy),
        )
    }

    /// The rules by normalised name, checked once here so queries only look them up.
    pub(super) fn grants(&self) -> Result<HashMap<String, Grant>, DnsError> {
        if self.min_ttl > self.max_ttl {
            return Err(DnsError::TtlRange {
                min: self.min_ttl,
                max: self.max_ttl,
            });
        }
        let mut grants: HashMap<String, Grant> = HashMap::new();
        for rule in &self.rules {
            let name = normalise(&rule.name).ok_or_else(|| DnsError::BadRule {
                name: rule.name.clone(),
            })?;
            let grant = grants.entry(name).or_default();
            match rule.port {
                None => grant.any_port = true,
                Some(port) => {
                    grant.ports.insert(port);
                }
            }
        }
        Ok(grants)
    }
}

/// What answers for one allowed name open: every port, and/or these ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Grant {
    pub any_port: bool,
    pub ports: BTreeSet<u16>,
}

/// Lower-cases `name` and drops a trailing dot; `None` if it is not a plausible DNS name. The
/// `--allow` parser has checked policy names; this guards rules built by hand.
pub(super) fn normalise(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    (labels_ok && name.len() <= 253).then_some(name)
}

/// The default upstream: the first `nameserver` of the host's `/etc/resolv.conf`, port 53.
pub fn system_upstream() -> Result<SocketAddr, DnsError> {
    upstream_from_resolv_conf(Path::new(RESOLV_CONF))
}

/// The first usable `nameserver` of the resolv.conf at `path`, port 53. Link-local IPv6 servers
/// need a zone (`%eth0`) a `SocketAddr` parsed this way cannot carry, so they are skipped.
pub fn upstream_from_resolv_conf(path: &Path) -> Result<SocketAddr, DnsError> {
    let text = fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => words.next()?.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .find(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| DnsError::NoNameserver {
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &[(&str, Option<u16>)]) -> ResolverConfig {
        let rules = rules
            .iter()
            .map(|(name, port)| DomainRule {
                name: (*name).to_owned(),
                port: *port,
            })
            .collect();
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        ResolverConfig::new(addr, addr, "t", rules)
    }

    #[test]
    fn rules_merge_per_name_and_normalise() {
        let grants = config(&[
            ("API.example.com.", Some(443)),
            ("api.example.com", Some(8443)),
            ("b.example", None),
        ])
        .grants()
        .unwrap();
        let api = &grants["api.example.com"];
        assert!(!api.any_port);
        assert_eq!(api.ports, BTreeSet::from([443, 8443]));
        assert!(grants["b.example"].any_port);
        assert_eq!(grants.len(), 2);
    }

    #[test]
    fn bad_rules_and_ttl_ranges_are_refused() {
        assert!(matches!(
            config(&[("a..b", None)]).grants(),
            Err(DnsError::BadRule { .. })
        ));
        assert!(matches!(
            config(&[("*.b", None)]).grants(),
            Err(DnsError::BadRule { .. })
        ));
        let mut c = config(&[]);
        c.min_ttl = 10;
        c.max_ttl = 5;
        assert!(matches!(c.grants(), Err(DnsError::TtlRange { .. })));
    }

    #[test]
    fn only_domain_rules_come_from_a_policy() {
        let policy = NetPolicy::allowlist(&["10.0.0.0/8", "a.example:443", "b.example"]).unwrap();
        let rules = DomainRule::from_policy(&policy);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].port, Some(443));
    }

    #[test]
    fn upstream_is_the_first_usable_nameserver() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::write(
            &path,
            "# comment\nsearch example\nnameserver fe80::1%eth0\nnameserver fe80::1\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n",
        )
        .unwrap();
        let up = upstream_from_resolv_conf(&path).unwrap();
        assert_eq!(up, "192.0.2.53:53".parse().unwrap());

        fs::write(&path, "search example\n").unwrap();
        let err = upstream_from_resolv_conf(&path).unwrap_err();
        assert!(matches!(err, DnsError::NoNameserver { .. }), "{err}");
        let missing = upstream_from_resolv_conf(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
