//! `hearth seccomp render|check`: seccomp policies on their own, e.g. for Firecracker users.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::output::{self, outln, Stream};
use crate::exit::{CliError, ErrorKind};

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
    CliError::new(ErrorKind::BadInput, format!("{policy}: {err}"))
}

pub fn run(command: SeccompCommand) -> anyhow::Result<u8> {
    match command {
        SeccompCommand::Check { file } => {
            hearth_seccomp::load_policy(&file)
                .map_err(|err| CliError::new(ErrorKind::BadInput, err.to_string()))?;
            outln!("ok")?;
        }
        SeccompCommand::Render {
            target,
            policy,
            output,
        } => {
            let loaded = hearth_seccomp::load_policy(&policy)
                .map_err(|err| CliError::new(ErrorKind::BadInput, err.to_string()))?;
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
        .map_err(|err| CliError::new(ErrorKind::BadInput, format!("{}: {err}", path.display())))
}
