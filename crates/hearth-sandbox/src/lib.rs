//! Isolation for hearth: sandbox directories, the backends that run sandboxes, and the client
//! that talks to `hearth-guest` inside them. The sandbox id is `hearth-id`'s; the network
//! (namespaces, firewall, DNS) is `hearth-net`'s.

pub mod backend;
pub mod cgroup;
pub mod dirs;
pub mod error_kind;
pub mod guest_client;
pub mod host_tools;
pub mod logs;
pub mod mounts;
pub mod pidfd;
pub mod process_stamp;
pub mod seccomp;
pub mod spec;
pub mod template_root;
pub mod userns;
pub mod vmm_cgroup;
pub mod workspace;

pub use error_kind::{Classify, ErrorKind};
pub use hearth_id::{IdError, SandboxId, SandboxNames};

// In-crate paths only (`crate::id::SandboxId`, `crate::net::tap`), so the backends read as before;
// not re-exported: users name `hearth_id` and `hearth_net` themselves.
use hearth_id as id;
use hearth_net as net;
