//! `hearth seccomp render|check`: seccomp policies on their own, e.g. for Firecracker users.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::output::{self, outln, Stream};
use crate::exit::{CliError, BAD_INPUT};

#[derive(Debug, Subcommand)]
pub enum SeccompCommand {
    /// Print a policy rendered for one target.
    Render {
        /// firecracker: seccompiler JSON (compile with --output for the --seccomp-filter file);
        /// oci: the runtime-spec linux.seccomp section; bpf: the filter instructions.
        #[arg(long)]
        target: Target,
        /// A built-in profile (default, strict, audit) or a .toml/.json policy file.
        #[arg(default_value = "default", value_name = "PROFILE|FILE")]
        policy: String,
        /// firecracker: also compile to BPF and write Firecracker's binary filter file here;
        /// bpf: also write the file `hearth-guest serve --seccomp-bpf` reads.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Validate a policy file; prints `ok` or one line naming the file, rule and problem.
    Check {
        /// A .toml or .json policy file.
        file: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Target {
    Firecracker,
    Oci,
    Bpf,
}

fn bad(policy: &str, err: impl std::fmt::Display) -> CliError {
    CliError::new(BAD_INPUT, format!("{policy}: {err}"))
}

pub fn run(command: SeccompCommand) -> anyhow::Result<u8> {
    match command {
        SeccompCommand::Check { file } => {
            hearth_seccomp::load_policy(&file)
                .map_err(|err| CliError::new(BAD_INPUT, err.to_string()))?;
            outln!("ok")?;
        }
        SeccompCommand::Render {
            target,
            policy,
            output,
        } => {
            let loaded = hearth_seccomp::load_policy(&policy)
                .map_err(|err| CliError::new(BAD_INPUT, err.to_string()))?;
            let text = match target {
                Target::Oci => {
                    let value = hearth_seccomp::render_oci(&loaded, None)
                        .map_err(|err| bad(&policy, err))?;
                    serde_json::to_string_pretty(&value)?
                }
                Target::Bpf => {
                    let filters =
                        hearth_seccomp::render_bpf(&loaded).map_err(|err| bad(&policy, err))?;
                    if let Some(path) = output {
                        let bytes = hearth_proto::bpf::encode(&filters.to_raw())
                            .map_err(|err| bad(&policy, err))?;
                        write_output(&path, &bytes)?;
                    }
                    filters.to_string()
                }
                Target::Firecracker => {
                    let json = hearth_seccomp::render_firecracker(&loaded)
                        .map_err(|err| bad(&policy, err))?;
                    if let Some(path) = output {
                        let programs = hearth_seccomp::compile_firecracker_json(&json)
                            .map_err(|err| bad(&policy, err))?;
                        let bytes = hearth_seccomp::encode_firecracker_bpf(&programs);
                        write_output(&path, &bytes)?;
                    }
                    json
                }
            };
            // JSON, or the filter listing: for scripts and seccomp tools, as rendered.
            output::write_raw_line(Stream::Stdout, &text)?;
        }
    }
    Ok(0)
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes)
        .map_err(|err| CliError::new(BAD_INPUT, format!("{}: {err}", path.display())))
}

/// Whether any call under the policy is audited (and so needs a listener to answer it).
fn audits(policy: &hearth_seccomp::SeccompPolicy) -> bool {
    use hearth_seccomp::Action;
    policy.default_action == Action::AuditDeny
        || policy.rules.iter().any(|r| r.action == Action::AuditDeny)
}

/// The OCI rendering for a new sandbox: with `listener` as `listenerPath` when the policy audits
/// anything, so `audit_deny` reaches the sandbox's supervisor (`SCMP_ACT_NOTIFY`). The policy is
/// hardened for a workload first (no setuid/setgid bits, no AF_VSOCK, whatever it says).
pub fn render_for_sandbox(raw: &str, listener: &Path) -> Result<serde_json::Value, CliError> {
    let policy = hearth_seccomp::load_workload_policy(raw)
        .map_err(|err| CliError::new(BAD_INPUT, format!("seccomp policy {raw}: {err}")))?;
    render_policy_for_sandbox(&policy, listener)
        .map_err(|err| CliError::new(BAD_INPUT, format!("seccomp policy {raw}: {err}")))
}

/// [`render_for_sandbox`] of a loaded policy.
pub fn render_policy_for_sandbox(
    policy: &hearth_seccomp::SeccompPolicy,
    listener: &Path,
) -> Result<serde_json::Value, hearth_seccomp::OciError> {
    hearth_seccomp::render_oci(policy, audits(policy).then_some(listener))
}

/// The `hearth-guest --seccomp-bpf` file for a policy, for an OCI sandbox whose runtime already
/// audits: `audit_deny` is plain EPERM.
pub fn guest_bpf(raw: &str) -> Result<Vec<u8>, CliError> {
    guest_bpf_with(raw, hearth_seccomp::render_bpf)
}

/// The policy of a microVM, installed by its `hearth-guest`: `audit_deny` as user notifications
/// the guest answers and records, so the denials reach the sandbox's audit.
pub fn vm_guest_bpf(raw: &str) -> Result<Vec<u8>, CliError> {
    guest_bpf_with(raw, hearth_seccomp::render_bpf_notify)
}

fn guest_bpf_with(
    raw: &str,
    render: fn(
        &hearth_seccomp::SeccompPolicy,
    ) -> Result<hearth_seccomp::BpfFilters, hearth_seccomp::BpfError>,
) -> Result<Vec<u8>, CliError> {
    let bad = |err: &dyn std::fmt::Display| {
        CliError::new(BAD_INPUT, format!("guest seccomp policy {raw}: {err}"))
    };
    let policy = hearth_seccomp::load_workload_policy(raw).map_err(|err| bad(&err))?;
    let filters = render(&policy).map_err(|err| bad(&err))?;
    hearth_proto::bpf::encode(&filters.to_raw()).map_err(|err| bad(&err))
}
