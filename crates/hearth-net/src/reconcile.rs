//! Start-up reconciliation: remove every hearth-named namespace, link, nft table and slot that no
//! live sandbox owns (what a crash or `kill -9` in the middle of a setup leaves behind).
//!
//! Owners are read back from the objects themselves: namespace `hearth-<id>`, table
//! `hearth_<id with '_' for '-'>`, and host links (`hth…`, named by a hash) from their alias
//! `hearth:<id>`. A link without a readable alias has no known owner and goes unless a live
//! sandbox has that exact name.

use std::collections::BTreeSet;

use serde::Serialize;

use super::firewall::{FirewallError, FirewallManager, LINK_ALIAS_PREFIX};
use super::netns;
use super::rtnl::Rtnl;
use super::ruleset;
use hearth_id::SandboxId;
use hearth_id::{LINK_PREFIX, OBJECT_PREFIX};

/// Prefix of hearth's nft tables (`SandboxNames::nft_table`).
const TABLE_PREFIX: &str = "hearth_";

/// What a reconciliation removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub tables: Vec<String>,
    pub slots: Vec<SandboxId>,
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.links.is_empty()
            && self.tables.is_empty()
            && self.slots.is_empty()
    }
}

impl FirewallManager {
    /// Removes every hearth object not owned by a sandbox in `live`. Every kind of object is
    /// tried even if another failed; all failures are returned together.
    pub fn reconcile(&self, live: &[SandboxId]) -> Result<ReconcileReport, FirewallError> {
        self.reconcile_where(live, |_| true)
    }

    /// Like [`Self::reconcile`], but only touches objects for which `in_scope(owner)` holds
    /// (`None`: the owner is unknown). Lets tests, or several hearth instances on one host, clean
    /// up after themselves without touching each other's sandboxes.
    pub fn reconcile_where(
        &self,
        live: &[SandboxId],
        in_scope: impl Fn(Option<&SandboxId>) -> bool,
    ) -> Result<ReconcileReport, FirewallError> {
        let live: BTreeSet<SandboxId> = live.iter().cloned().collect();
        let stale = |owner: Option<SandboxId>| {
            !matches!(&owner, Some(id) if live.contains(id)) && in_scope(owner.as_ref())
        };
        let mut report = ReconcileReport::default();
        let mut errors = Vec::new();
        // Tables first: a table without its link is harmless, but it is also the cheapest step.
        match self.nft.tables("inet") {
            Ok(tables) => {
                report.tables = tables
                    .into_iter()
                    .filter(|t| is_table(t) && stale(table_owner(t)))
                    .collect();
                if !report.tables.is_empty() {
                    let batch = ruleset::remove_all(report.tables.iter().map(String::as_str));
                    if let Err(err) = self.nft.apply(&batch, "deleting stale hearth tables") {
                        errors.push(err.into());
                    }
                }
            }
            Err(err) => errors.push(err.into()),
        }
        if let Err(err) = self.reconcile_links(&live, &stale, &mut report) {
            errors.push(err);
        }
        match netns::list() {
            Ok(names) => {
                for name in names
                    .into_iter()
                    .filter(|n| n.starts_with(OBJECT_PREFIX) && stale(netns_owner(n)))
                {
                    match netns::remove(&name) {
                        Ok(()) => report.namespaces.push(name),
                        Err(err) => errors.push(err.into()),
                    }
                }
            }
            Err(err) => errors.push(err.into()),
        }
        match self.store().list() {
            Ok(slots) => {
                for (id, _) in slots.into_iter().filter(|(id, _)| stale(Some(id.clone()))) {
                    match self.store().release(&id) {
                        Ok(()) => report.slots.push(id),
                        Err(err) => errors.push(err.into()),
                    }
                }
            }
            Err(err) => errors.push(err.into()),
        }
        if errors.is_empty() {
            Ok(report)
        } else {
            Err(FirewallError::Reconcile { errors })
        }
    }

    fn reconcile_links(
        &self,
        live: &BTreeSet<SandboxId>,
        stale: &dyn Fn(Option<SandboxId>) -> bool,
        report: &mut ReconcileReport,
    ) -> Result<(), FirewallError> {
        let live_names: BTreeSet<String> = live
            .iter()
            .flat_map(|id| {
                let names = id.names();
                [names.veth_host, names.veth_peer, names.tap]
            })
            .collect();
        let mut host = Rtnl::open("host")?;
        for link in host.links()? {
            if !link.name.starts_with(LINK_PREFIX) || live_names.contains(&link.name) {
                continue;
            }
            if stale(link.alias.as_deref().and_then(link_owner)) && host.delete_link(&link.name)? {
                report.links.push(link.name);
            }
        }
        Ok(())
    }
}

fn is_table(name: &str) -> bool {
    name.starts_with(TABLE_PREFIX)
}

fn table_owner(table: &str) -> Option<SandboxId> {
    // Ids never contain '_', so mapping it back to '-' is exact.
    SandboxId::parse(&table.strip_prefix(TABLE_PREFIX)?.replace('_', "-")).ok()
}

fn netns_owner(name: &str) -> Option<SandboxId> {
    SandboxId::parse(name.strip_prefix(OBJECT_PREFIX)?).ok()
}

fn link_owner(alias: &str) -> Option<SandboxId> {
    SandboxId::parse(alias.strip_prefix(LINK_ALIAS_PREFIX)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_back_from_names_made_by_sandbox_names() {
        let id = SandboxId::parse("sb-a1-b2").unwrap();
        let names = id.names();
        assert_eq!(table_owner(&names.nft_table), Some(id.clone()));
        assert_eq!(netns_owner(&names.netns), Some(id.clone()));
        assert_eq!(link_owner(&format!("{LINK_ALIAS_PREFIX}{id}")), Some(id));
        assert_eq!(table_owner("hearth_"), None);
        assert_eq!(netns_owner("other-ns"), None);
        assert_eq!(link_owner("some alias"), None);
        assert!(is_table(&SandboxId::parse("x").unwrap().names().nft_table));
    }
}
