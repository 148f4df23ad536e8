//! `hearth bench vm`: a QEMU sandbox from `create` to `hearth-guest` answering its health check,
//! next to the same kernel booting straight to a trivial init (the image's baseline initramfs:
//! `/init` prints one line and powers off) with the same QEMU accelerator and machine, in the
//! same run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hearth_image::GuestImage;
use hearth_sandbox::backend::qemu::Accel;
use hearth_sandbox::backend::BackendKind;
use serde::Serialize;

use super::{bench_request, progress, Percentiles};
use crate::cli::escape::field;
use crate::cli::output::{self, outln};
use crate::exit::{CliError, ErrorKind};
use crate::request::SandboxRequest;
use crate::sandboxes::{SandboxError, SandboxManager};

/// A baseline boot that takes longer than this is counted as failed.
const BASELINE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
struct VmBench {
    accel: String,
    kernel_release: String,
    hearth_create_to_ready: Percentiles,
    baseline_boot_to_trivial_init: Percentiles,
    ratio_p50: f64,
}

pub async fn run(manager: &SandboxManager, boots: usize, json: bool) -> anyhow::Result<u8> {
    // The baseline boots this host's QEMU directly, with the same accelerator.
    let qemu = crate::vm::qemu_backend(manager.store.state_dir(), &manager.dirs)
        .ok_or(SandboxError::BackendUnavailable(BackendKind::Qemu))?;
    // A missing image's error already says how to build one.
    let image = GuestImage::current(&crate::vm::images_dir(manager.store.state_dir()))
        .map_err(|err| CliError::new(ErrorKind::HostLacks, err.to_string()))?;
    manager.reconcile().await?;
    let accel = qemu.config().accel;
    let scratch = tempfile::Builder::new()
        .prefix("hearth-bench-vm-")
        .tempdir_in(manager.dirs.root())?;

    progress(json, &format!("baseline: kernel to trivial init x{boots}"));
    let mut baseline = Vec::with_capacity(boots);
    for n in 0..boots {
        baseline
            .push(boot_baseline(&qemu.config().binary, accel, &image, scratch.path(), n).await?);
    }
    progress(
        json,
        &format!("hearth: create --backend qemu to ready x{boots}"),
    );
    let mut hearth = Vec::with_capacity(boots);
    for n in 0..boots {
        let spec = SandboxRequest {
            id: Some(format!("bench-vm-{}-{n}", std::process::id())),
            ..bench_request(BackendKind::Qemu)
        }
        .validate()?;
        let id = spec.id.clone();
        let started = Instant::now();
        let created = manager.create(&spec).await;
        let elapsed = started.elapsed();
        if let Err(err) = manager.remove(&id, true).await {
            tracing::warn!(%id, %err, "removing a benchmark VM");
        }
        created?;
        hearth.push(elapsed);
    }
    let hearth = Percentiles::of(hearth);
    let baseline = Percentiles::of(baseline);
    let result = VmBench {
        accel: format!("{accel:?}").to_lowercase(),
        kernel_release: image.kernel_release.clone(),
        ratio_p50: hearth.p50_ms / baseline.p50_ms.max(f64::MIN_POSITIVE),
        hearth_create_to_ready: hearth,
        baseline_boot_to_trivial_init: baseline,
    };
    if json {
        output::print_json(&result)?;
    } else {
        outln!(
            "accelerator: {}, kernel {}",
            result.accel,
            field(&result.kernel_release)
        )?;
        outln!("{:<48}{:>10}{:>10}", "", "p50 ms", "p99 ms")?;
        let row =
            |name: &str, p: &Percentiles| outln!("{name:<48}{:>10.0}{:>10.0}", p.p50_ms, p.p99_ms);
        row(
            "hearth create --backend qemu -> guest ready",
            &result.hearth_create_to_ready,
        )?;
        row(
            "reference: same kernel -> trivial init",
            &result.baseline_boot_to_trivial_init,
        )?;
        outln!(
            "{:<48}{:>9.2}x (goal <= 1.3x)",
            "ratio (p50)",
            result.ratio_p50
        )?;
    }
    Ok(0)
}

/// Boots the kernel with the baseline initramfs and times it until QEMU exits (its init powers
/// off right after printing its line).
async fn boot_baseline(
    binary: &Path,
    accel: Accel,
    image: &GuestImage,
    scratch: &Path,
    n: usize,
) -> anyhow::Result<Duration> {
    let console = scratch.join(format!("baseline-{n}.log"));
    // The same accelerator settings and kernel parameters as hearth's own boots on `machine`.
    let base_cmdline = "console=ttyS0 panic=-1 reboot=t quiet hearth.baseline=1";
    let (accel, machine, cmdline) = match accel {
        Accel::Kvm => ("kvm", "microvm", base_cmdline.to_owned()),
        Accel::Tcg => (
            hearth_sandbox::backend::qemu::TCG_ACCEL,
            "pc",
            format!(
                "{base_cmdline} {}",
                hearth_sandbox::backend::qemu::PC_KERNEL_ARGS
            ),
        ),
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(["-accel", accel, "-M", machine, "-m", "512", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.baseline_initrd)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let status = tokio::time::timeout(BASELINE_LIMIT, child.wait()).await??;
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    anyhow::ensure!(
        status.success() && log.contains("baseline ready"),
        "the baseline boot failed ({status}): {}",
        log.lines().last().unwrap_or("no console output")
    );
    Ok(elapsed)
}
