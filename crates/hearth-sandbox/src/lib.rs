//! Isolation for hearth: validated sandbox ids and their directories, the backends that run
//! sandboxes, network namespaces, and the client that talks to `hearth-guest` inside them.

pub mod backend;
pub mod cgroup;
pub mod dirs;
pub mod error_kind;
pub mod guest_client;
pub mod id;
pub mod image;
pub mod logs;
pub mod mounts;
pub mod net;
pub mod pidfd;
pub mod process_stamp;
pub mod spec;
pub mod userns;
pub mod vmm_cgroup;
pub mod workspace;

pub use error_kind::{Classify, ErrorKind};
pub use id::{IdError, SandboxId, SandboxNames};
