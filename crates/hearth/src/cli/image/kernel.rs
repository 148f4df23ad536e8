//! `hearth image kernel --firecracker`: builds the Firecracker guest kernel, with progress.

use std::path::PathBuf;

use clap::Args;
use hearth_image::kernel::{KernelBuilder, KernelError, FIRECRACKER_CONFIG_NAME};
use hearth_sandbox::backend::firecracker::find_shared_file;
use serde::Serialize;

use super::output::{self, errln, outln};
use crate::config::Settings;
use crate::exit::{Classify, CliError, ErrorKind};

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Build the kernel Firecracker boots (the only kernel hearth builds; required so the
    /// command says what it makes).
    #[arg(long, required = true)]
    firecracker: bool,
    /// Firecracker's recommended kernel config (default: shared/firecracker/
    /// microvm-kernel-ci-x86_64-6.1.config beside the project checkout). Read, never copied.
    #[arg(long, env = "HEARTH_FIRECRACKER_KERNEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Progress as JSON lines on stderr and the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Rebuild even if a kernel with the same inputs exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Serialize)]
struct KernelReport {
    key: String,
    vmlinux: PathBuf,
    built: bool,
    config: PathBuf,
}

/// The base config: the flag, else `shared/firecracker/...` above the working directory or
/// the hearth binary.
fn base_config(args: &KernelArgs) -> Result<PathBuf, CliError> {
    if let Some(path) = &args.config {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(CliError::new(
                ErrorKind::BadInput,
                format!("--config {} is not a file", path.display()),
            ))
        };
    }
    let mut starts = Vec::new();
    starts.extend(std::env::current_dir().ok());
    starts.extend(std::env::current_exe().ok());
    find_shared_file(FIRECRACKER_CONFIG_NAME, &starts).ok_or_else(|| {
        CliError::new(
            ErrorKind::HostLacks,
            format!(
                "no Firecracker kernel config: shared/firecracker/{FIRECRACKER_CONFIG_NAME} is not \
                 beside the working directory or the hearth binary; pass --config FILE"
            ),
        )
    })
}

fn cli_error(err: KernelError) -> CliError {
    CliError::new(err.kind(), err.to_string())
}

pub fn run(args: KernelArgs, settings: &Settings) -> anyhow::Result<u8> {
    debug_assert!(args.firecracker);
    let config = base_config(&args)?;
    let builder = KernelBuilder::new(
        crate::firecracker::kernels_dir(&settings.state_dir),
        crate::vm::images_dir(&settings.state_dir).join("cache"),
        config.clone(),
    )
    .force(args.force);
    let json = args.json;
    let outcome = builder
        .build(&mut |step| {
            // Progress only: a closed stderr doesn't stop the build.
            let _ = if json {
                output::write_raw_line(
                    output::Stream::Stderr,
                    &serde_json::to_string(&step).unwrap_or_default(),
                )
            } else {
                errln!("hearth image kernel: {step}")
            };
        })
        .map_err(cli_error)?;
    let report = KernelReport {
        key: outcome.key,
        vmlinux: outcome.vmlinux,
        built: outcome.built,
        config,
    };
    if json {
        output::print_json(&report)?;
    } else {
        outln!("{}", report.vmlinux.display())?;
    }
    Ok(0)
}
