//! The backends one host offers, by kind: every sandbox names its own (`SandboxSpec::backend`),
//! so OCI containers and microVMs live side by side and each is removed by the backend that made
//! it.

use std::sync::Arc;

use hearth_sandbox::backend::{BackendKind, SandboxBackend};

use super::SandboxError;

/// The usable backends of this host.
#[derive(Debug)]
pub struct Backends {
    all: Vec<Arc<dyn SandboxBackend>>,
}

impl Backends {
    pub fn new(first: Arc<dyn SandboxBackend>) -> Self {
        Self { all: vec![first] }
    }

    /// Adds a backend; a later one of the same kind replaces the earlier.
    pub fn add(&mut self, backend: Arc<dyn SandboxBackend>) {
        self.all.retain(|b| b.kind() != backend.kind());
        self.all.push(backend);
    }

    /// The backend of `kind`, or why this host has none.
    pub fn get(&self, kind: BackendKind) -> Result<&dyn SandboxBackend, SandboxError> {
        self.all
            .iter()
            .find(|b| b.kind() == kind)
            .map(AsRef::as_ref)
            .ok_or(SandboxError::BackendUnavailable(kind))
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn SandboxBackend> {
        self.all.iter().map(AsRef::as_ref)
    }
}
