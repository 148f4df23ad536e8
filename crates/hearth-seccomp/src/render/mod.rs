//! The three renderings of one policy: Firecracker seccompiler JSON, OCI `linux.seccomp`, BPF.

pub mod bpf;
pub mod firecracker;
pub mod oci;
