//! The backends one host offers, by kind: every sandbox names its own (`SandboxSpec::backend`),
//! so OCI containers and microVMs live side by side and each is removed by the backend that made
//! it.

use hearth_sandbox::backend::{BackendKind, SandboxBackend};

use super::SandboxError;

/// The usable backends of this host.
#[derive(Debug)]
pub struct Backends {
    all: Vec<Box<dyn SandboxBackend>>,
}

impl Backends {
    pub fn new(first: Box<dyn SandboxBackend>) -> Self {
        Self { all: vec![first] }
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
