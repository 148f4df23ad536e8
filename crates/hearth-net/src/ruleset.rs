//! The nftables ruleset of one sandbox, built as one libnftables JSON batch.
//!
//! The sandbox's packets reach the host's netfilter hooks through its veth: `forward` for
//! everything routed past the host, `input` for the host itself (the gateway, the resolver, any
//! other service), `output` for the host talking to the sandbox. Each sandbox has its own `inet`
//! table whose base chains pick out its veth by name and jump to regular chains:
//!
//! ```text
//! forward_egress (priority -1):  iifname V -> egress
//! forward (priority 0):          oifname V -> ingress
//! input:    iifname V -> to_host     (gateway + DNS on the host side; else drop)
//! output:   oifname V -> ingress     (established/related and published ports only)
//! egress:   established | spoof drop | always-denied drop | private drop | IPv6 drop
//!           | allowlist accept | drop
//! postrouting (nat): ip saddr S oifname != V masquerade
//! ```
//!
//! With `domain[:port]` rules the table also holds two timed sets that hearth's DNS resolver
//! fills ([`DNS_ANY_SET`], [`DNS_PORT_SET`]); the egress chain accepts them where it accepts
//! allowlisted networks, so an answer pointing at a denied range stays denied.
//!
//! Egress hooks in one priority ahead of ingress so a packet from one sandbox to another meets its
//! sender's egress chain first, whatever order the two tables were made in: the drop is logged,
//! and audited, as the sender's.
//!
//! Base chains accept by default so other sandboxes' traffic passes through untouched; a sandbox's
//! own traffic always ends in an explicit verdict. Every drop rule counts and logs to nflog group
//! N with the prefix `hearth:<id>:<reason>` for the drop log.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::schema::{
    Chain, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Counter, JumpTarget, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::policy::{
    AllowRule, NetPolicy, ALWAYS_DENIED_V4, ALWAYS_DENIED_V6, PRIVATE_V4, PRIVATE_V6,
};

/// Why a packet was dropped; the last part of the log prefix and of the rule's comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropReason {
    /// The source address is not the sandbox's own.
    Spoof,
    /// IPv6, which sandboxes do not get.
    Ipv6,
    /// Loopback, link-local (cloud metadata), multicast, reserved, or another sandbox.
    Always,
    /// RFC 1918, CGNAT or ULA without `allow_private`.
    Private,
    /// The host's own addresses, other than the gateway and resolver ports.
    Host,
    /// Not on the allowlist.
    Egress,
    /// A new connection into the sandbox to a port it does not publish.
    Ingress,
}

impl DropReason {
    pub const ALL: [Self; 7] = [
        Self::Spoof,
        Self::Ipv6,
        Self::Always,
        Self::Private,
        Self::Host,
        Self::Egress,
        Self::Ingress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spoof => "spoof",
            Self::Ipv6 => "ipv6",
            Self::Always => "always",
            Self::Private => "private",
            Self::Host => "host",
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }

    /// The comment of the drop rules for this reason.
    pub fn comment(self) -> String {
        format!("drop {}", self.as_str())
    }
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone)]
pub struct RulesetSpec<'a> {
    pub table: &'a str,
    pub veth_host: &'a str,
    /// The sandbox id, for log prefixes.
    pub id: &'a str,
    pub host: Ipv4Addr,
    pub sandbox: Ipv4Addr,
    /// The whole sandbox pool: other sandboxes, always denied.
    pub pool: Ipv4Net,
    pub gateway_ports: &'a [u16],
    pub dns_port: u16,
    pub log_group: u16,
    pub policy: &'a NetPolicy,
}

const EGRESS: &str = "egress";
const INGRESS: &str = "ingress";
const TO_HOST: &str = "to_host";

/// Addresses hearth's DNS resolver answered for `domain` rules without a port: every port and
/// protocol to them is allowed until the element times out.
pub const DNS_ANY_SET: &str = "dns_any_v4";
/// `address . port` pairs the resolver answered for `domain:port` rules: TCP and UDP to that port.
pub const DNS_PORT_SET: &str = "dns_port_v4";
/// The most elements either set holds. When it is full the resolver answers SERVFAIL instead of
/// letting one sandbox grow kernel memory without bound.
pub const DNS_SET_SIZE: u32 = 4096;

/// Whether `policy` has `domain[:port]` rules, and so the table gets the DNS answer sets.
pub fn has_domain_rules(policy: &NetPolicy) -> bool {
    policy
        .allow
        .iter()
        .any(|rule| matches!(rule, AllowRule::Domain { .. }))
}

/// The base chain that sends the sandbox's forwarded packets to [`EGRESS`], ahead of every
/// sandbox's ingress (see the module docs).
const FORWARD_EGRESS: &str = "forward_egress";

/// The batch that installs (or atomically replaces) the sandbox's table.
pub fn install(spec: &RulesetSpec<'_>) -> Nftables<'static> {
    let mut batch = Batch::new();
    // add + delete + add: replaces an existing table in the same transaction, so a repeated
    // setup converges and there is never a moment without rules.
    batch.add(table(spec.table));
    batch.delete(table(spec.table));
    batch.add(table(spec.table));
    let t = spec.table;
    batch.add(base_chain(
        t,
        FORWARD_EGRESS,
        NfChainType::Filter,
        NfHook::Forward,
        -1,
    ));
    batch.add(base_chain(
        t,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    ));
    batch.add(base_chain(
        t,
        "input",
        NfChainType::Filter,
        NfHook::Input,
        0,
    ));
    batch.add(base_chain(
        t,
        "output",
        NfChainType::Filter,
        NfHook::Output,
        0,
    ));
    batch.add(base_chain(
        t,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    for name in [EGRESS, INGRESS, TO_HOST] {
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: t.to_owned().into(),
            name: name.into(),
            ..Chain::default()
        }));
    }
    if has_domain_rules(spec.policy) {
        batch.add(dns_set(
            t,
            DNS_ANY_SET,
            SetTypeValue::Single(SetType::Ipv4Addr),
        ));
        let pair = [SetType::Ipv4Addr, SetType::InetService];
        batch.add(dns_set(
            t,
            DNS_PORT_SET,
            SetTypeValue::Concatenated(pair.to_vec().into()),
        ));
    }
    let mut rules = RuleWriter { spec, batch };
    rules.hooks();
    rules.egress();
    rules.host_chain();
    rules.ingress();
    rules.batch.to_nftables()
}

/// The batch that deletes the table if it exists (add + delete: no error when it does not).
pub fn remove(table_name: &str) -> Nftables<'static> {
    remove_all([table_name])
}

/// One batch deleting several tables.
pub fn remove_all<'a>(tables: impl IntoIterator<Item = &'a str>) -> Nftables<'static> {
    let mut batch = Batch::new();
    for name in tables {
        batch.add(table(name));
        batch.delete(table(name));
    }
    batch.to_nftables()
}

struct RuleWriter<'s, 'a> {
    spec: &'s RulesetSpec<'a>,
    batch: Batch<'static>,
}

impl RuleWriter<'_, '_> {
    fn rule(&mut self, chain: &'static str, comment: String, expr: Vec<Statement<'static>>) {
        self.batch.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: self.spec.table.to_owned().into(),
            chain: chain.into(),
            expr: expr.into(),
            comment: Some(comment.into()),
            ..Rule::default()
        }));
    }

    /// A counted, logged drop of packets matching `conditions`.
    fn drop_rule(
        &mut self,
        chain: &'static str,
        reason: DropReason,
        mut conditions: Vec<Statement<'static>>,
    ) {
        let mut log = Log::new(Some(u32::from(self.spec.log_group)));
        log.prefix = Some(format!("hearth:{}:{}", self.spec.id, reason.as_str()).into());
        conditions.extend([
            Statement::Counter(Counter::Anonymous(None)),
            Statement::Log(Some(log)),
            Statement::Drop(None),
        ]);
        self.rule(chain, reason.comment(), conditions);
    }

    fn hooks(&mut self) {
        let veth = self.spec.veth_host.to_owned();
        self.rule(
            FORWARD_EGRESS,
            "from sandbox".into(),
            vec![is(meta(MetaKey::Iifname), s(&veth)), jump(EGRESS)],
        );
        self.rule(
            "forward",
            "to sandbox".into(),
            vec![is(meta(MetaKey::Oifname), s(&veth)), jump(INGRESS)],
        );
        self.rule(
            "input",
            "from sandbox".into(),
            vec![is(meta(MetaKey::Iifname), s(&veth)), jump(TO_HOST)],
        );
        self.rule(
            "output",
            "to sandbox".into(),
            vec![is(meta(MetaKey::Oifname), s(&veth)), jump(INGRESS)],
        );
        let masquerade = vec![
            is(field("ip", "saddr"), s(&self.spec.sandbox.to_string())),
            not(meta(MetaKey::Oifname), s(&veth)),
            Statement::Masquerade(None),
        ];
        self.rule("postrouting", "masquerade".into(), masquerade);
    }

    fn egress(&mut self) {
        self.rule(EGRESS, "established".into(), vec![established(), accept()]);
        self.drop_rule(
            EGRESS,
            DropReason::Spoof,
            vec![not(field("ip", "saddr"), s(&self.spec.sandbox.to_string()))],
        );
        let mut always_v4: Vec<Ipv4Net> = ALWAYS_DENIED_V4.to_vec();
        always_v4.push(self.spec.pool);
        self.drop_rule(
            EGRESS,
            DropReason::Always,
            vec![is(field("ip", "daddr"), set4(&always_v4))],
        );
        self.drop_rule(
            EGRESS,
            DropReason::Always,
            vec![is(field("ip6", "daddr"), set6(&ALWAYS_DENIED_V6))],
        );
        if !self.spec.policy.allow_private {
            self.drop_rule(
                EGRESS,
                DropReason::Private,
                vec![is(field("ip", "daddr"), set4(&PRIVATE_V4))],
            );
            self.drop_rule(
                EGRESS,
                DropReason::Private,
                vec![is(field("ip6", "daddr"), set6(&PRIVATE_V6))],
            );
        }
        self.drop_rule(
            EGRESS,
            DropReason::Ipv6,
            vec![is(meta(MetaKey::Nfproto), s("ipv6"))],
        );
        let allowed: Vec<(Ipv4Net, Option<u16>)> = self.spec.policy.ipv4_rules().collect();
        for (net, port) in allowed {
            let mut expr = vec![];
            if net.prefix_len() > 0 {
                expr.push(is(field("ip", "daddr"), prefix4(net)));
            } else {
                expr.push(is(meta(MetaKey::Nfproto), s("ipv4")));
            }
            if let Some(port) = port {
                expr.extend(tcp_udp_port(port));
            }
            expr.extend([Statement::Counter(Counter::Anonymous(None)), accept()]);
            let rule = super::AllowRule::Net {
                net: IpNet::V4(net),
                port,
            };
            self.rule(EGRESS, format!("allow {rule}"), expr);
        }
        if has_domain_rules(self.spec.policy) {
            self.dns_answers();
        }
        self.drop_rule(EGRESS, DropReason::Egress, vec![]);
    }

    /// Accepts what the resolver put in the DNS sets; placed with the allowlist, after the
    /// always-denied and private drops, so a name resolving to a denied address stays denied.
    fn dns_answers(&mut self) {
        let any = vec![
            is(field("ip", "daddr"), s(&format!("@{DNS_ANY_SET}"))),
            counter(),
            accept(),
        ];
        self.rule(EGRESS, "allow dns answers".into(), any);
        let pair = Expression::Named(NamedExpression::Concat(vec![
            field("ip", "daddr"),
            field("th", "dport"),
        ]));
        let ported = vec![
            tcp_or_udp(),
            is(pair, s(&format!("@{DNS_PORT_SET}"))),
            counter(),
            accept(),
        ];
        self.rule(EGRESS, "allow dns answers with port".into(), ported);
    }

    fn host_chain(&mut self) {
        let host = s(&self.spec.host.to_string());
        self.rule(TO_HOST, "established".into(), vec![established(), accept()]);
        self.drop_rule(
            TO_HOST,
            DropReason::Ipv6,
            vec![is(meta(MetaKey::Nfproto), s("ipv6"))],
        );
        self.drop_rule(
            TO_HOST,
            DropReason::Spoof,
            vec![not(field("ip", "saddr"), s(&self.spec.sandbox.to_string()))],
        );
        if !self.spec.gateway_ports.is_empty() {
            let ports = Expression::Named(NamedExpression::Set(
                self.spec
                    .gateway_ports
                    .iter()
                    .map(|p| SetItem::Element(Expression::Number(u32::from(*p))))
                    .collect(),
            ));
            let expr = vec![
                is(field("ip", "daddr"), host.clone()),
                is(field("tcp", "dport"), ports),
                counter(),
                accept(),
            ];
            self.rule(TO_HOST, "allow gateway".into(), expr);
        }
        let mut dns = vec![is(field("ip", "daddr"), host)];
        dns.extend(tcp_udp_port(self.spec.dns_port));
        dns.extend([counter(), accept()]);
        self.rule(TO_HOST, "allow dns".into(), dns);
        if self.spec.policy.allow_private {
            // The host's addresses count as private: with allow_private the allowlist decides.
            self.rule(TO_HOST, "allow private".into(), vec![jump(EGRESS)]);
        }
        self.drop_rule(TO_HOST, DropReason::Host, vec![]);
    }

    fn ingress(&mut self) {
        self.rule(INGRESS, "established".into(), vec![established(), accept()]);
        let published = &self.spec.policy.publish;
        if !published.is_empty() {
            let ports = Expression::Named(NamedExpression::Set(
                published
                    .iter()
                    .map(|p| SetItem::Element(Expression::Number(u32::from(*p))))
                    .collect(),
            ));
            let expr = vec![
                is(field("ip", "daddr"), s(&self.spec.sandbox.to_string())),
                is(field("tcp", "dport"), ports),
                counter(),
                accept(),
            ];
            self.rule(INGRESS, "publish".into(), expr);
        }
        self.drop_rule(INGRESS, DropReason::Ingress, vec![]);
    }
}

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: name.to_owned().into(),
        handle: None,
    })
}

/// A named set whose elements carry their own timeouts (the resolver sets them from DNS TTLs).
fn dns_set(
    table: &str,
    name: &'static str,
    set_type: SetTypeValue<'static>,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: name.into(),
        set_type,
        flags: Some(HashSet::from([SetFlag::Timeout])),
        size: Some(DNS_SET_SIZE),
        ..Set::default()
    }))
}

fn base_chain(
    table: &str,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn s(text: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(text.to_owned()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn established() -> Statement<'static> {
    let state = Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }));
    Statement::Match(Match {
        left: state,
        right: Expression::List(vec![s("established"), s("related")]),
        op: Operator::IN,
    })
}

/// `meta l4proto { tcp, udp } th dport PORT`.
fn tcp_udp_port(port: u16) -> [Statement<'static>; 2] {
    [
        tcp_or_udp(),
        is(field("th", "dport"), Expression::Number(u32::from(port))),
    ]
}

/// `meta l4proto { tcp, udp }`: a port means something only for these.
fn tcp_or_udp() -> Statement<'static> {
    let protos = Expression::Named(NamedExpression::Set(vec![
        SetItem::Element(s("tcp")),
        SetItem::Element(s("udp")),
    ]));
    is(meta(MetaKey::L4proto), protos)
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

fn prefix(addr: String, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(addr.into())),
        len: u32::from(len),
    }))
}

fn prefix4(net: Ipv4Net) -> Expression<'static> {
    prefix(net.network().to_string(), net.prefix_len())
}

/// An anonymous interval set; overlapping members are merged first, as nft refuses overlaps.
fn set4(nets: &[Ipv4Net]) -> Expression<'static> {
    let merged = Ipv4Net::aggregate(&nets.to_vec());
    Expression::Named(NamedExpression::Set(
        merged
            .into_iter()
            .map(|n| SetItem::Element(prefix4(n)))
            .collect(),
    ))
}

fn set6(nets: &[Ipv6Net]) -> Expression<'static> {
    let merged = Ipv6Net::aggregate(&nets.to_vec());
    Expression::Named(NamedExpression::Set(
        merged
            .into_iter()
            .map(|n| SetItem::Element(prefix(n.network().to_string(), n.prefix_len())))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NetPolicy;

    fn spec(policy: &NetPolicy) -> RulesetSpec<'_> {
        RulesetSpec {
            table: "hearth_t",
            veth_host: "hthv0",
            id: "t",
            host: Ipv4Addr::new(10, 231, 0, 1),
            sandbox: Ipv4Addr::new(10, 231, 0, 2),
            pool: "10.231.0.0/16".parse().unwrap(),
            gateway_ports: &[8080],
            dns_port: 53,
            log_group: 7,
            policy,
        }
    }

    fn rules(batch: &Nftables<'_>) -> Vec<serde_json::Value> {
        let json = serde_json::to_value(batch).unwrap();
        json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("rule").cloned())
            .collect()
    }

    #[test]
    fn every_drop_rule_counts_and_logs_with_the_sandbox_prefix() {
        let policy = NetPolicy::allowlist(&["203.0.113.0/24:443"]).unwrap();
        let batch = install(&spec(&policy));
        let drops: Vec<_> = rules(&batch)
            .into_iter()
            .filter(|r| r["comment"].as_str().unwrap().starts_with("drop"))
            .collect();
        assert!(drops.len() >= 8, "{drops:?}");
        for rule in drops {
            let expr = rule["expr"].as_array().unwrap();
            let n = expr.len();
            assert!(expr[n - 3].get("counter").is_some(), "{rule}");
            let log = &expr[n - 2]["log"];
            assert_eq!(log["group"], 7, "{rule}");
            assert!(
                log["prefix"].as_str().unwrap().starts_with("hearth:t:"),
                "{rule}"
            );
            assert!(expr[n - 1].get("drop").is_some(), "{rule}");
        }
    }

    #[test]
    fn private_ranges_are_dropped_only_without_allow_private() {
        let mut policy = NetPolicy::allowlist(&["10.0.0.0/8"]).unwrap();
        let has_private = |p: &NetPolicy| {
            rules(&install(&spec(p)))
                .iter()
                .any(|r| r["comment"] == "drop private")
        };
        assert!(has_private(&policy));
        policy.allow_private = true;
        assert!(!has_private(&policy));
        let text = serde_json::to_string(&install(&spec(&policy))).unwrap();
        assert!(text.contains("\"allow 10.0.0.0/8\""), "{text}");
        assert!(
            text.contains("169.254.0.0"),
            "link-local stays denied: {text}"
        );
    }

    #[test]
    fn the_table_is_replaced_in_one_batch() {
        let json = serde_json::to_value(install(&spec(&NetPolicy::default()))).unwrap();
        let cmds: Vec<String> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .take(3)
            .map(|o| o.as_object().unwrap().keys().next().unwrap().clone())
            .collect();
        assert_eq!(cmds, ["add", "delete", "add"]);
    }

    #[test]
    fn domain_rules_get_timed_sets_accepted_after_the_denials() {
        let no_domains = serde_json::to_string(&install(&spec(&NetPolicy::default()))).unwrap();
        assert!(!no_domains.contains(DNS_ANY_SET), "{no_domains}");

        let policy = NetPolicy::allowlist(&["api.example.com:443", "b.example"]).unwrap();
        let batch = install(&spec(&policy));
        let json = serde_json::to_value(&batch).unwrap();
        let sets: Vec<_> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("set"))
            .collect();
        assert_eq!(sets.len(), 2, "{sets:?}");
        for set in sets {
            assert_eq!(set["flags"], serde_json::json!(["timeout"]), "{set}");
        }
        let egress: Vec<String> = rules(&batch)
            .into_iter()
            .filter(|r| r["chain"] == EGRESS)
            .map(|r| r["comment"].as_str().unwrap().to_owned())
            .collect();
        let at = |c: &str| egress.iter().rposition(|x| x == c).unwrap();
        let any = at("allow dns answers");
        let ported = at("allow dns answers with port");
        for denial in ["drop always", "drop private", "drop ipv6", "drop spoof"] {
            assert!(at(denial) < any.min(ported), "{egress:?}");
        }
        assert_eq!(egress.last().unwrap(), "drop egress", "{egress:?}");
    }
}
