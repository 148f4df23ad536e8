//! The OCI backend: each sandbox is a container run by runc, crun or runsc.
//!
//! hearth writes a bundle (see [`bundle`]) and runs it detached under hearth's private runtime
//! state root; the container's PID 1 is `hearth-guest`, which keeps running after the CLI exits.
//! Removal is `delete --force`, which kills every process and removes the cgroup.

pub mod bundle;
pub mod runtime;

pub use bundle::BundleError;
pub use runtime::{OciRuntime, OciRuntimeKind, RuntimeError};

use crate::backend::{BackendError, BackendKind, GuestEndpoint, LaunchContext, SandboxBackend};
use crate::id::SandboxId;
use crate::spec::SandboxSpec;

/// Errors of the OCI backend.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs sandboxes as OCI containers.
#[derive(Debug, Clone)]
pub struct OciBackend {
    runtime: OciRuntime,
}

impl OciBackend {
    pub fn new(runtime: OciRuntime) -> Self {
        Self { runtime }
    }

    pub fn runtime(&self) -> &OciRuntime {
        &self.runtime
    }

    fn start_inner(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext<'_>,
    ) -> Result<GuestEndpoint, OciError> {
        bundle::write_bundle(spec, ctx)?;
        let container = spec.id.names().container;
        let started = self.runtime.run_detached(
            &container,
            &ctx.dirs.bundle(),
            &ctx.dirs.runtime_log(),
            &ctx.dirs.guest_log(),
        );
        if let Err(err) = started {
            // runc removes what it made when `run` fails early, but not always after the
            // container exists (e.g. a failing start hook): make sure.
            if let Err(cleanup) = self.runtime.delete_force(&container) {
                tracing::warn!(%container, error = %cleanup, "cleanup after failed start");
            }
            return Err(err.into());
        }
        Ok(GuestEndpoint::UnixSocket {
            path: ctx.dirs.guest_socket(),
        })
    }
}

impl SandboxBackend for OciBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Oci
    }

    fn describe(&self) -> String {
        self.runtime
            .version()
            .unwrap_or_else(|| self.runtime.kind.to_string())
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext<'_>,
    ) -> Result<GuestEndpoint, BackendError> {
        Ok(self.start_inner(spec, ctx)?)
    }

    fn remove(&self, id: &SandboxId) -> Result<(), BackendError> {
        Ok(self
            .runtime
            .stop_and_delete(&id.names().container)
            .map_err(OciError::from)?)
    }

    fn is_running(&self, id: &SandboxId) -> Result<bool, BackendError> {
        let status = self
            .runtime
            .status(&id.names().container)
            .map_err(OciError::from)?;
        Ok(status.as_deref() == Some("running"))
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.runtime.list().map_err(OciError::from)?)
    }
}
