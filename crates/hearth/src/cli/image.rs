//! `hearth image build|ls|rm`: the microVM guest image under `<state dir>/images`;
//! `hearth image kernel --firecracker`: the Firecracker guest kernel (see `image/kernel.rs`).

mod kernel;

use std::path::PathBuf;

use clap::Subcommand;
use hearth_image::{self as image, GuestImage, ImageBuilder, ImageError};
use serde::Serialize;

use super::escape::field;
use super::output::{self, errln, outln};
use crate::config::Settings;
use crate::exit::{Classify, CliError};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest image offline from Debian packages (kernel, initramfs with hearth-guest as
    /// init, ext4 rootfs with python3); does nothing when no input changed.
    Build {
        /// Print the result as JSON on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
        /// Rebuild even if an image with the same inputs exists.
        #[arg(long)]
        force: bool,
        /// Debian kernel flavour (`linux-image-<FLAVOR>`); `amd64` has the 9p the workspace share
        /// needs, `cloud-amd64` boots faster but has none.
        #[arg(long, default_value = image::KERNEL_FLAVOR)]
        kernel_flavor: String,
    },
    /// List built images; `*` marks the current one.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Build the Firecracker guest kernel (vmlinux) from Debian's linux-source with
    /// Firecracker's recommended config; long (tens of minutes on 2 cores), cached by inputs.
    Kernel(kernel::KernelArgs),
    /// Remove an image by hash.
    Rm {
        hash: String,
        /// Also remove the current image.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Serialize)]
struct ImageReport {
    hash: String,
    current: bool,
    built: Option<bool>,
    dir: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    baseline_initrd: PathBuf,
    rootfs: PathBuf,
    kernel_release: String,
    size_bytes: u64,
    manifest: image::Manifest,
}

impl ImageReport {
    fn new(image: GuestImage, current: bool, built: Option<bool>) -> Self {
        Self {
            size_bytes: image.size_bytes(),
            hash: image.hash,
            current,
            built,
            dir: image.dir,
            kernel: image.kernel,
            initrd: image.initrd,
            baseline_initrd: image.baseline_initrd,
            rootfs: image.rootfs,
            kernel_release: image.kernel_release,
            manifest: image.manifest,
        }
    }
}

fn cli_error(err: ImageError) -> CliError {
    CliError::new(err.kind(), err.to_string())
}

pub fn run(command: ImageCommand, settings: &Settings) -> anyhow::Result<u8> {
    let images_dir = settings.state_dir.join("images");
    match command {
        ImageCommand::Build {
            json,
            force,
            kernel_flavor,
        } => {
            let builder = ImageBuilder::new(&images_dir, &settings.guest_binary)
                .kernel_flavor(kernel_flavor)
                .force(force);
            let outcome = builder
                // Progress only: a closed stderr doesn't stop the build.
                .build(&mut |step| {
                    let _ = errln!("hearth image: {step}");
                })
                .map_err(cli_error)?;
            let report = ImageReport::new(outcome.image, true, Some(outcome.built));
            if json {
                output::print_json(&report)?;
            } else {
                outln!("{}", report.dir.display())?;
            }
        }
        ImageCommand::Ls { json } => {
            let (images, current) = image::list(&images_dir).map_err(cli_error)?;
            let reports: Vec<ImageReport> = images
                .into_iter()
                .map(|i| {
                    let is_current = current.as_deref() == Some(i.hash.as_str());
                    ImageReport::new(i, is_current, None)
                })
                .collect();
            if json {
                output::print_json(&reports)?;
            } else {
                for r in &reports {
                    let mark = if r.current { '*' } else { ' ' };
                    outln!(
                        "{mark} {}  {}  {:.0} MiB  {} packages",
                        field(&r.hash),
                        field(&r.kernel_release),
                        r.size_bytes as f64 / (1024.0 * 1024.0),
                        r.manifest.packages.len()
                    )?;
                }
            }
        }
        ImageCommand::Kernel(args) => return kernel::run(args, settings),
        ImageCommand::Rm { hash, force } => {
            image::remove(&images_dir, &hash, force).map_err(cli_error)?;
        }
    }
    Ok(0)
}
