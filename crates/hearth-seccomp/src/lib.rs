//! Seccomp for hearth: a policy model, its renderings (Firecracker, OCI, BPF) and the audit of
//! every refused system call.
//!
//! # Policy API (what `hearth seccomp render|check` and the backends call)
//!
//! - [`load_policy`]`(name_or_path) -> Result<SeccompPolicy, LoadError>`: a built-in profile
//!   name ([`PROFILE_NAMES`]: `default`, `strict`, `audit`) or a `.toml`/`.json` file, validated.
//! - [`harden_for_workload`]`(&policy) -> Result<SeccompPolicy, HardenError>`: the policy with
//!   the rules every workload gets merged in, whatever it was: no setuid/setgid mode bits
//!   (`chmod`, `open`, `mkdir`, `mknod`, ...), no `socket(AF_VSOCK)` (both `audit_deny`),
//!   `openat2`/`fchmodat2` fail with `ENOSYS`, `io_uring_*` stay refused. See [`harden`].
//! - [`load_workload_policy`]`(name_or_path) -> Result<SeccompPolicy, LoadError>`:
//!   [`load_policy`] then [`harden_for_workload`]; what a backend applies to a workload (the
//!   VMM's own filter uses [`load_policy`]: hardening is about the workload's files and sockets).
//! - [`render_firecracker`]`(&policy) -> Result<String, FirecrackerError>`: seccompiler JSON for
//!   the `vmm`, `api` and `vcpu` threads; [`FirecrackerFilters`] reads/writes per-thread files,
//!   [`compile_firecracker_json`] compiles one, [`encode_firecracker_bpf`] writes the binary
//!   file Firecracker takes with `--seccomp-filter`.
//! - [`render_oci`]`(&policy, listener: Option<&Path>) -> Result<serde_json::Value, OciError>`:
//!   the runtime-spec `linux.seccomp` object; with a listener, `audit_deny` is `SCMP_ACT_NOTIFY`.
//!   It lists x86_64, x32 and i386, but not i386 when rules condition the arguments of a call
//!   i386 multiplexes through `socketcall`/`ipc` (hardened policies do: AF_VSOCK).
//! - [`render_bpf`]`(&policy) -> Result<BpfFilters, BpfError>`: BPF programs for x86_64;
//!   `Display` dumps the instructions, [`BpfFilters::apply`] / [`BpfFilters::apply_in_pre_exec`]
//!   install them. [`render_bpf_notify`] makes `audit_deny` a user notification instead, for a
//!   process that listens itself (`hearth-guest` in a microVM).
//! - [`validate()`] checks a parsed policy; errors name the rule by index and system call.
//!
//! The file format and the meaning of a policy are documented in [`policy`]; the rules about
//! overlapping rules in [`validate`]; the built-in profiles in [`profiles`]; the workload
//! hardening and how it merges with a policy's own rules in [`harden`].

pub mod audit;
pub mod notify;

pub mod harden;
pub mod policy;
pub mod profiles;
pub mod render;
pub mod validate;

mod api;
pub use api::{load_policy, LoadError};
pub use harden::{harden_for_workload, load_workload_policy, HardenError};
pub use policy::{Action, ArgCondition, ArgWidth, CmpOp, Rule, SeccompPolicy};
pub use profiles::{profile, PROFILE_NAMES};
pub use render::bpf::{
    is_notify_return, raw_program_notifies, render_bpf, render_bpf_notify, ApplyError, BpfError,
    BpfFilters, SECCOMP_RET_USER_NOTIF,
};
pub use render::firecracker::{
    compile_firecracker_json, encode_firecracker_bpf, render_firecracker, FirecrackerError,
    FirecrackerFilters,
};
pub use render::oci::{render_oci, OciError, OciSeccomp};
pub use validate::{validate, ValidationError, ValidationErrors};
