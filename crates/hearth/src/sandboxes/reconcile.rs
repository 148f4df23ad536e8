//! Finishing what a crashed hearth process left half-done.
//!
//! Run before commands that create or list sandboxes. It removes:
//! - sandboxes whose record says `creating` or `removing` while the process doing it is gone;
//! - runtime containers, sandbox directories, network namespaces, links, nft tables and address
//!   slots named like hearth's but belonging to no record.

use std::collections::BTreeSet;

use hearth_id::OBJECT_PREFIX;
use hearth_sandbox::vmm_cgroup::{CgroupParent, VmmCgroup};
use hearth_sandbox::SandboxId;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::Serialize;

use super::{SandboxError, SandboxManager};
use crate::store::SandboxStatus;

/// What reconciliation removed.
#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub abandoned_sandboxes: Vec<String>,
    pub orphan_containers: Vec<String>,
    /// Seccomp supervisors (by sandbox id) whose sandbox has no live record.
    pub orphan_supervisors: Vec<String>,
    pub orphan_dirs: Vec<String>,
    pub orphan_netns: Vec<String>,
    pub orphan_links: Vec<String>,
    pub orphan_tables: Vec<String>,
    pub errors: Vec<String>,
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        self.abandoned_sandboxes.is_empty()
            && self.orphan_containers.is_empty()
            && self.orphan_supervisors.is_empty()
            && self.orphan_dirs.is_empty()
            && self.orphan_netns.is_empty()
            && self.orphan_links.is_empty()
            && self.orphan_tables.is_empty()
            && self.errors.is_empty()
    }
}

/// Whether a process with this pid exists (a zombie or another user's process counts).
fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

impl SandboxManager {
    /// Removes everything abandoned by crashed hearth processes; never touches a sandbox that a
    /// live process is still creating or removing.
    pub async fn reconcile(&self) -> Result<ReconcileReport, SandboxError> {
        // No create is between writing its record and making its objects while we look.
        let _exclusive = self
            .lock_sandboxes(nix::fcntl::FlockArg::LockExclusive)
            .await?;
        let mut report = ReconcileReport::default();
        let records = self.store.list_sandboxes().await?;
        let mut known = BTreeSet::new();
        for record in &records {
            let in_flight = matches!(
                record.status,
                SandboxStatus::Creating | SandboxStatus::Removing
            );
            if in_flight && !process_alive(record.owner_pid) {
                match self.teardown(&record.id).await {
                    Ok(()) => report.abandoned_sandboxes.push(record.id.to_string()),
                    Err(err) => report.errors.push(err.to_string()),
                }
            } else {
                known.insert(record.id.clone());
            }
        }
        // The id an object is named after, if it is valid and has no live record.
        let orphan = |raw: &str| SandboxId::parse(raw).ok().filter(|id| !known.contains(id));

        for backend in self.backends.iter() {
            for container in backend.list().await? {
                let Some(raw) = container.strip_prefix(OBJECT_PREFIX) else {
                    continue;
                };
                if let Some(id) = orphan(raw) {
                    match backend.remove(&id).await {
                        Ok(()) => report.orphan_containers.push(container),
                        Err(err) => report.errors.push(err.to_string()),
                    }
                }
            }
        }
        // Before the dirs: a supervisor flushes into the store on its way out, and its pid file
        // lives in the dir. Found by command line, so one whose dir is already gone is found too.
        let keep = |id: &SandboxId| known.contains(id);
        match crate::supervisor::stop_strays(self.dirs.root(), keep) {
            Ok(stopped) => report.orphan_supervisors = stopped,
            Err(err) => report.errors.push(err.to_string()),
        }
        // Their cgroups, also those of supervisors that died on their own.
        for raw in VmmCgroup::list_in(CgroupParent::Supervisors) {
            if let Some(id) = orphan(&raw) {
                if let Err(err) = crate::supervisor::remove_cgroup(&id) {
                    report.errors.push(err.to_string());
                }
            }
        }
        for dir in self.dirs.list_sandbox_dirs()? {
            if let Some(id) = orphan(&dir) {
                match self.dirs.sandbox(&id).remove() {
                    Ok(()) => report.orphan_dirs.push(dir),
                    Err(err) => report.errors.push(err.to_string()),
                }
            }
        }
        // Workspace images, after the dirs where they were mounted.
        let images = self.workspace_images();
        for raw in images.list() {
            if let Some(id) = orphan(&raw) {
                if !self.dirs.sandbox(&id).base().exists() {
                    if let Err(err) = images.remove(&id) {
                        report.errors.push(err.to_string());
                    }
                }
            }
        }
        // Namespaces, links, nft tables and slots of sandboxes that have no live record.
        let live: Vec<SandboxId> = known.iter().cloned().collect();
        match self
            .with_firewall(move |firewall| firewall.reconcile(&live))
            .await
        {
            Ok(net) => {
                report.orphan_netns = net.namespaces;
                report.orphan_links = net.links;
                report.orphan_tables = net.tables;
            }
            Err(err) => report.errors.push(err.to_string()),
        }
        if !report.is_empty() {
            tracing::info!(?report, "reconciled leftovers of earlier hearth processes");
        }
        Ok(report)
    }
}
