//! `hearth doctor`'s Firecracker checks: the binaries and their versions, whether KVM really
//! runs a guest, vhost-vsock, the Firecracker kernel, and a summary saying whether
//! `--backend firecracker` can run here and why not.

use std::path::Path;

use hearth_image::kernel::current_kernel;
use hearth_sandbox::backend::firecracker::support::tool_version;
use hearth_sandbox::backend::qemu::KvmState;

use crate::config::Settings;
use crate::doctor::Check;

pub fn checks(settings: &Settings) -> Vec<Check> {
    let fc = &settings.firecracker;
    let mut checks = Vec::new();
    let binary = fc.firecracker_binary();
    let firecracker = match &binary {
        Ok(path) => match tool_version(path) {
            Some(v) => Check::pass(
                "firecracker",
                format!("Firecracker {} ({})", v.version, path.display()),
                false,
            ),
            None => Check::fail(
                "firecracker",
                format!("{} does not answer --version", path.display()),
                "reinstall Firecracker, or point --firecracker-bin at a working binary",
                false,
            ),
        },
        Err(reason) => Check::fail(
            "firecracker",
            reason.clone(),
            "install Firecracker from its release page (needs KVM), or pass --firecracker-bin PATH",
            false,
        ),
    };
    let firecracker_ok = firecracker.ok;
    checks.push(firecracker);
    checks.push(check_jailer(settings));
    let kvm = check_kvm_for_firecracker(&settings.state_dir);
    let kvm_ok = kvm.ok;
    checks.push(kvm);
    checks.push(check_vhost_vsock());
    let kernel = check_kernel(&settings.state_dir);
    let kernel_ok = kernel.ok;
    checks.push(kernel);
    let image_ok =
        hearth_image::GuestImage::current(&crate::vm::images_dir(&settings.state_dir)).is_ok();
    let missing: Vec<&str> = [
        (!firecracker_ok).then_some("the firecracker binary"),
        (!kvm_ok).then_some("a KVM that runs guests"),
        (!kernel_ok).then_some("the Firecracker kernel"),
        (!image_ok).then_some("the guest image"),
    ]
    .into_iter()
    .flatten()
    .collect();
    checks.push(if missing.is_empty() {
        Check::pass("fc-backend", "--backend firecracker can run here", false)
    } else {
        Check::fail(
            "fc-backend",
            format!(
                "--backend firecracker cannot run here; missing: {}",
                missing.join(", ")
            ),
            "fix the checks above; microVMs can use --backend qemu meanwhile",
            false,
        )
    });
    checks
}

fn check_jailer(settings: &Settings) -> Check {
    if settings.firecracker.direct {
        return Check::pass(
            "jailer",
            "not used: --firecracker-direct runs Firecracker in hearth's own namespace setup",
            false,
        );
    }
    match settings.firecracker.jailer_binary() {
        Ok(Some(path)) => match tool_version(&path) {
            Some(v) => Check::pass(
                "jailer",
                format!("jailer {} ({}): VMs run jailed", v.version, path.display()),
                false,
            ),
            None => Check::fail(
                "jailer",
                format!("{} does not answer --version", path.display()),
                "install the jailer of the same Firecracker release",
                false,
            ),
        },
        Ok(None) => Check::fail(
            "jailer",
            "jailer not found: Firecracker would run directly (no chroot, no uid drop)",
            "install Firecracker's jailer next to firecracker, or pass --jailer-bin PATH",
            false,
        ),
        Err(reason) => Check::fail(
            "jailer",
            reason,
            "point --jailer-bin at the jailer binary",
            false,
        ),
    }
}

/// Firecracker needs a KVM that really runs a guest: the QEMU probe (which boots firmware
/// under KVM, cached from the qemu check just before) answers that. Without QEMU only the
/// device can be checked, which PVM hosts pass while failing every guest.
fn check_kvm_for_firecracker(state_dir: &Path) -> Check {
    if let Some(support) = crate::vm::qemu_support(state_dir, false) {
        return match support.kvm {
            KvmState::Usable => Check::pass(
                "fc-kvm",
                "/dev/kvm runs a guest (QEMU firmware probe)",
                false,
            ),
            KvmState::Unusable { reason } => Check::fail(
                "fc-kvm",
                format!("/dev/kvm cannot run a Firecracker guest: {reason}"),
                "run Firecracker on a host with hardware KVM; here use --backend qemu (TCG)",
                false,
            ),
        };
    }
    let support = hearth_sandbox::backend::firecracker::firecracker_support();
    match support.kvm {
        hearth_sandbox::backend::firecracker::support::KvmState::Usable => Check::fail(
            "fc-kvm",
            "/dev/kvm opens, but no guest was booted to prove it (QEMU is not installed)",
            "apt-get install qemu-system-x86 so hearth doctor can probe KVM",
            false,
        ),
        _ => Check::fail(
            "fc-kvm",
            support
                .reason()
                .unwrap_or_else(|| "/dev/kvm is unusable".to_owned()),
            "run Firecracker on a host with hardware KVM",
            false,
        ),
    }
}

fn check_vhost_vsock() -> Check {
    if Path::new("/dev/vhost-vsock").exists() {
        Check::pass(
            "vhost-vsock",
            "/dev/vhost-vsock exists (QEMU's vsock channel)",
            false,
        )
    } else {
        Check::fail(
            "vhost-vsock",
            "/dev/vhost-vsock missing: QEMU uses virtio-serial; Firecracker needs none (its vsock is a Unix socket)",
            "modprobe vhost_vsock",
            false,
        )
    }
}

fn check_kernel(state_dir: &Path) -> Check {
    match current_kernel(&crate::firecracker::kernels_dir(state_dir)) {
        Ok(vmlinux) => Check::pass("fc-kernel", vmlinux.display().to_string(), false),
        Err(err) => Check::fail(
            "fc-kernel",
            err.to_string(),
            "hearth image kernel --firecracker (a long build; needs gcc make flex bison bc libelf-dev libssl-dev)",
            false,
        ),
    }
}
