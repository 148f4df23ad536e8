//! The backends one host offers, by kind: every sandbox names its own (`SandboxSpec::backend`),
//! so OCI containers and microVMs live side by side and each is removed by the backend that made
//! it.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_sandbox::backend::{BackendKind, SandboxBackend};

use super::SandboxError;

/// The usable backends of this host.
#[derive(Debug)]
pub struct Backends {
    all: Vec<Arc<dyn SandboxBackend>>,
    /// Why a backend this host lacks is missing, when hearth knows (one line each).
    missing: BTreeMap<String, String>,
}

impl Backends {
    pub fn new(first: Arc<dyn SandboxBackend>) -> Self {
        Self {
            all: vec![first],
            missing: BTreeMap::new(),
        }
    }

    /// Records why the backend of `kind` can't create sandboxes (it may still be there to
    /// remove old ones), for the error a create gets.
    pub fn mark_missing(&mut self, kind: BackendKind, reason: impl Into<String>) {
        self.missing.insert(kind.to_string(), reason.into());
    }

    /// The error for a backend this host does not offer.
    pub fn unavailable(&self, kind: BackendKind) -> SandboxError {
        match self.missing.get(&kind.to_string()) {
            Some(reason) => SandboxError::BackendMissing {
                kind,
                reason: reason.clone(),
            },
            None => SandboxError::BackendUnavailable(kind),
        }
    }

    /// Adds a backend; a later one of the same kind replaces the earlier.
    pub fn add(&mut self, backend: Arc<dyn SandboxBackend>) {
        self.all.retain(|b| b.kind() != backend.kind());
        self.all.push(backend);
    }

    /// The backend of `kind` for a new sandbox, or why this host can't make one.
    pub fn get_for_create(&self, kind: BackendKind) -> Result<&dyn SandboxBackend, SandboxError> {
        if self.missing.contains_key(&kind.to_string()) {
            return Err(self.unavailable(kind));
        }
        self.get(kind)
    }

    /// The backend of `kind` (to use or remove existing sandboxes), or why this host has none.
    pub fn get(&self, kind: BackendKind) -> Result<&dyn SandboxBackend, SandboxError> {
        self.all
            .iter()
            .find(|b| b.kind() == kind)
            .map(AsRef::as_ref)
            .ok_or_else(|| self.unavailable(kind))
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn SandboxBackend> {
        self.all.iter().map(AsRef::as_ref)
    }
}
