//! Adding DNS answers to a sandbox's nft sets, with timeouts, in one atomic batch.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Elem, Expression, NamedExpression};
use nftables::schema::{Element, NfListObject, Nftables};
use nftables::types::NfFamily;

use crate::nft::{Nft, NftError};
use crate::ruleset::{DNS_ANY_SET, DNS_PORT_SET};

/// One address the sandbox may reach, for `timeout` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetElement {
    /// Every port and protocol (a bare `domain` rule).
    Any { addr: Ipv4Addr, timeout: u32 },
    /// TCP and UDP to `port` (a `domain:port` rule).
    Port {
        addr: Ipv4Addr,
        port: u16,
        timeout: u32,
    },
}

impl SetElement {
    fn set(self) -> &'static str {
        match self {
            Self::Any { .. } => DNS_ANY_SET,
            Self::Port { .. } => DNS_PORT_SET,
        }
    }

    fn timeout(self) -> u32 {
        match self {
            Self::Any { timeout, .. } | Self::Port { timeout, .. } => timeout,
        }
    }

    /// The element's key, which the set matches on.
    fn value(self) -> Expression<'static> {
        match self {
            Self::Any { addr, .. } => Expression::String(addr.to_string().into()),
            Self::Port { addr, port, .. } => Expression::Named(NamedExpression::Concat(vec![
                Expression::String(addr.to_string().into()),
                Expression::Number(u32::from(port)),
            ])),
        }
    }

    /// The same element without its timeout, for grouping duplicates.
    fn key(self) -> (&'static str, Ipv4Addr, u16) {
        match self {
            Self::Any { addr, .. } => (DNS_ANY_SET, addr, 0),
            Self::Port { addr, port, .. } => (DNS_PORT_SET, addr, port),
        }
    }
}

/// Adds `elements` to the DNS sets of table inet `table` in one transaction. An element already
/// there gets the new timeout: the batch adds, deletes and adds again, since before Linux 6.x
/// re-adding an element leaves its old timeout in place.
pub fn add_elements(nft: &Nft, table: &str, elements: &[SetElement]) -> Result<(), NftError> {
    if elements.is_empty() {
        return Ok(());
    }
    let what = format!("adding DNS answers to table inet {table}");
    nft.apply(&batch(table, elements), &what)
}

/// The add + delete + add batch; duplicates keep their longest timeout.
fn batch(table: &str, elements: &[SetElement]) -> Nftables<'static> {
    let mut unique: BTreeMap<(&'static str, Ipv4Addr, u16), SetElement> = BTreeMap::new();
    for &element in elements {
        unique
            .entry(element.key())
            .and_modify(|kept| {
                if element.timeout() > kept.timeout() {
                    *kept = element;
                }
            })
            .or_insert(element);
    }
    let mut batch = Batch::new();
    for set in [DNS_ANY_SET, DNS_PORT_SET] {
        let in_set: Vec<SetElement> = unique
            .values()
            .copied()
            .filter(|e| e.set() == set)
            .collect();
        if in_set.is_empty() {
            continue;
        }
        let timed: Vec<Expression<'static>> = in_set
            .iter()
            .map(|e| {
                Expression::Named(NamedExpression::Elem(Elem {
                    val: Box::new(e.value()),
                    timeout: Some(e.timeout()),
                    ..Elem::default()
                }))
            })
            .collect();
        let bare: Vec<Expression<'static>> = in_set.iter().map(|e| e.value()).collect();
        batch.add(element(table, set, timed.clone()));
        batch.delete(element(table, set, bare));
        batch.add(element(table, set, timed));
    }
    batch.to_nftables()
}

fn element(
    table: &str,
    set: &'static str,
    elem: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: set.into(),
        elem: elem.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_refreshes_each_set_once_with_the_longest_timeout() {
        let addr = Ipv4Addr::new(192, 0, 2, 1);
        let json = serde_json::to_value(batch(
            "hearth_t",
            &[
                SetElement::Port {
                    addr,
                    port: 443,
                    timeout: 60,
                },
                SetElement::Port {
                    addr,
                    port: 443,
                    timeout: 300,
                },
                SetElement::Any { addr, timeout: 90 },
            ],
        ))
        .unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        let verbs: Vec<&str> = cmds
            .iter()
            .map(|c| c.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(verbs, ["add", "delete", "add", "add", "delete", "add"]);
        let ported = &cmds[3]["add"]["element"];
        assert_eq!(ported["name"], DNS_PORT_SET);
        let elems = ported["elem"].as_array().unwrap();
        assert_eq!(elems.len(), 1, "{elems:?}");
        assert_eq!(elems[0]["elem"]["timeout"], 300);
        assert_eq!(
            elems[0]["elem"]["val"]["concat"],
            serde_json::json!(["192.0.2.1", 443])
        );
        assert_eq!(cmds[1]["delete"]["element"]["elem"][0], "192.0.2.1");
    }
}
