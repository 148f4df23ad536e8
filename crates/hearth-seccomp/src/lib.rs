//! Seccomp for hearth: a policy model, its renderings (Firecracker, OCI, BPF) and the audit of
//! every refused system call.

pub mod audit;
pub mod notify;
