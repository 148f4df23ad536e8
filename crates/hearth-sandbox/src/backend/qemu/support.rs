//! What QEMU can do on this host, for choosing the accelerator and for `hearth doctor`.
//!
//! `/dev/kvm` opening is not enough: on PVM hosts it opens, creates VMs, and then stock guests
//! hang. So KVM counts as usable only when a real guest runs under it: QEMU boots its SeaBIOS
//! firmware with no disks, and the probe waits for the firmware's last words, `No bootable
//! device.`, on the debug console (port 0x402). That takes about 0.7 s under TCG here and less
//! on working KVM; on PVM the firmware stalls partway through POST. The probe costs up to
//! [`KVM_PROBE_TIMEOUT`] on such hosts, so callers should probe once (doctor, daemon start).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::argv::{Accel, QEMU_SANDBOX};
use super::QemuError;

/// The firmware's line that proves the guest ran to the end of POST.
const FIRMWARE_DONE: &str = "No bootable device";

/// How long the KVM probe may take before KVM is declared unusable. The firmware finishes in
/// about 0.7 s under TCG here and faster under working KVM; a false "unusable" on a very loaded
/// host only costs speed (TCG), and `hearth doctor` shows the reason.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The QEMU binary looked up in `PATH` by default.
pub const DEFAULT_BINARY: &str = "qemu-system-x86_64";

/// Whether KVM can run a guest here, and why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KvmState {
    Usable,
    Unusable { reason: String },
}

/// QEMU on this host (deserializable so a probe can be cached).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuSupport {
    pub binary: PathBuf,
    /// First line of `qemu-system-x86_64 --version`.
    pub version: String,
    pub kvm: KvmState,
    /// `/dev/vhost-vsock` exists: the guest channel can be vsock instead of virtio-serial.
    pub vhost_vsock: bool,
    /// This QEMU accepts `-sandbox` (built with seccomp).
    pub seccomp: bool,
    /// What sandboxes will use: KVM if usable, TCG otherwise.
    pub accel: Accel,
}

/// Why an unprivileged QEMU could not open `/dev/kvm`, if it could not. hearth runs QEMU as the
/// sandbox's own unprivileged id keeping only the device's group, so the device must be
/// read-write for its group (udev makes it 0660 root:kvm on most distributions).
fn kvm_closed_to_its_group() -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/kvm").ok()?.permissions().mode() & 0o777;
    (mode & 0o060 != 0o060).then(|| {
        format!(
            "/dev/kvm is mode {mode:o}: hearth runs QEMU unprivileged, with the device's group, \
             which needs read-write access (chmod 0660 /dev/kvm, group kvm)"
        )
    })
}

impl QemuSupport {
    /// Probes `binary` (a name looked up in `PATH`, or a path), running the KVM probe with its
    /// scratch files in `scratch` (a private directory). Fails only when QEMU cannot run at all.
    pub fn probe(binary: &Path, scratch: &Path) -> Result<Self, QemuError> {
        let version = version(binary)?;
        let seccomp = accepts_sandbox(binary);
        let kvm = if !Path::new("/dev/kvm").exists() {
            KvmState::Unusable {
                reason: "/dev/kvm does not exist".to_owned(),
            }
        } else if let Some(reason) = kvm_closed_to_its_group() {
            KvmState::Unusable { reason }
        } else {
            match probe_accel(binary, Accel::Kvm, scratch, KVM_PROBE_TIMEOUT) {
                Ok(()) => KvmState::Usable,
                Err(reason) => KvmState::Unusable { reason },
            }
        };
        let accel = match kvm {
            KvmState::Usable => Accel::Kvm,
            KvmState::Unusable { .. } => Accel::Tcg,
        };
        Ok(Self {
            binary: binary.to_owned(),
            version,
            kvm,
            vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
            seccomp,
            accel,
        })
    }
}

fn version(binary: &Path) -> Result<String, QemuError> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QemuError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// `-sandbox` is parsed in order and refused at once by a QEMU built without seccomp, before
/// `-version` prints and exits.
fn accepts_sandbox(binary: &Path) -> bool {
    Command::new(binary)
        .args(["-sandbox", QEMU_SANDBOX, "-version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Boots the firmware under `accel` and waits up to `timeout` for it to finish POST. The error
/// says what happened instead.
pub fn probe_accel(
    binary: &Path,
    accel: Accel,
    scratch: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let name = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let log = scratch.join(format!("probe-{name}-{}.log", std::process::id()));
    let _ = fs::remove_file(&log);
    let mut debugcon = std::ffi::OsString::from("file:");
    debugcon.push(&log);
    let mut child = Command::new(binary)
        .args(["-accel", name, "-machine", "pc", "-m", "32"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-debugcon")
        .arg(&debugcon)
        .args(["-global", "isa-debugcon.iobase=0x402"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
    let start = Instant::now();
    let outcome = loop {
        if fs::read_to_string(&log).is_ok_and(|text| text.contains(FIRMWARE_DONE)) {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            break Err(format!(
                "QEMU exited ({status}) during the {name} probe: {}",
                stderr.trim()
            ));
        }
        if start.elapsed() >= timeout {
            break Err(format!(
                "a guest under {name} did not finish its firmware within {timeout:?} \
                 (a /dev/kvm that cannot run stock guests, e.g. PVM)"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_file(&log);
    outcome
}
