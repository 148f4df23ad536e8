//! The runtime-spec `ContainerProcessState` a runtime sends along with the fds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name runtimes give the seccomp notification fd in `fds`.
pub const SECCOMP_FD_NAME: &str = "seccompFd";

/// runtime-spec `specs.ContainerProcessState`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProcessState {
    /// The runtime-spec version.
    pub oci_version: String,
    /// Names of the descriptors sent alongside, in order.
    #[serde(default)]
    pub fds: Vec<String>,
    /// The container process's pid in the runtime's pid namespace.
    pub pid: i32,
    /// `linux.seccomp.listenerMetadata` from the spec, verbatim.
    #[serde(default)]
    pub metadata: String,
    /// The container's state.
    pub state: ContainerState,
}

/// runtime-spec `specs.State`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// The runtime-spec version.
    pub oci_version: String,
    /// The container id given to the runtime.
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`.
    pub status: String,
    /// The container process's pid, when it runs.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The bundle directory.
    pub bundle: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}
