//! Wiring Firecracker into hearth: which binaries this host has (flags, then `PATH`), jailed or
//! direct.
//!
//! The backend is available when a `firecracker` binary is found; KVM is not checked here (a
//! VMM that can't create its VM fails the create with Firecracker's own error, and `hearth
//! doctor` says why beforehand). With a `jailer` it runs jailed unless `--firecracker-direct`
//! (or `HEARTH_FIRECRACKER_DIRECT=true`) asks for Firecracker in hearth's own netns setup.
//! The mode is a host setting: keep it the same between `create` and `rm`, since the jail of a
//! jailed VM is found through the jailer's configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_image::VmImages;
use hearth_sandbox::backend::firecracker::jailer::JailCgroups;
use hearth_sandbox::backend::firecracker::{
    FirecrackerBackend, FirecrackerConfig, JailerConfig, LaunchMode, VmmFilter,
};
use hearth_sandbox::dirs::RuntimeDirs;
use hearth_sandbox::host_tools::find_in_path;

/// The uid and gid a jailed VMM drops to: unprivileged, owning nothing else on the host.
pub const JAILER_UID: u32 = 64_000;
/// From spawning the VMM to `InstanceStart` accepted (the guest boots after that).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the Firecracker binaries are and how to run them (from the global flags).
#[derive(Debug, Clone, Default)]
pub struct FirecrackerSettings {
    /// `--firecracker-bin`; `None`: `firecracker` on PATH.
    pub firecracker: Option<PathBuf>,
    /// `--jailer-bin`; `None`: `jailer` on PATH.
    pub jailer: Option<PathBuf>,
    /// `--firecracker-direct`: no jailer even if one is installed.
    pub direct: bool,
    /// `--firecracker-seccomp`: the VMM's own filter (default: Firecracker's built-in one).
    pub vmm_filter: VmmFilter,
}

/// Parses `--firecracker-seccomp`: `builtin`, a seccompiler JSON file with per-thread filters
/// (such as Firecracker's published `x86_64-unknown-linux-musl.json`, edited), or a hearth
/// policy (profile name or file) applied to every VMM thread. Compiled here, so a filter that
/// can't work is refused before any VM is made.
///
/// This filters the VMM's threads on the host. The sandbox's own `--seccomp` policy is a
/// different layer: it filters the processes inside the guest, where `hearth-guest` applies and
/// audits it.
pub fn parse_vmm_filter(raw: &str) -> Result<VmmFilter, String> {
    if raw == "builtin" {
        return Ok(VmmFilter::Builtin);
    }
    let path = Path::new(raw);
    if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("--firecracker-seccomp {raw}: {err}"))?;
        let is_seccompiler = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v.get("vmm").is_some());
        if is_seccompiler {
            hearth_seccomp::compile_firecracker_json(&text)
                .map_err(|err| format!("--firecracker-seccomp {raw}: {err}"))?;
            return Ok(VmmFilter::Json(text));
        }
    }
    let policy = hearth_seccomp::load_policy(raw)
        .map_err(|err| format!("--firecracker-seccomp {raw}: {err}"))?;
    hearth_seccomp::FirecrackerFilters::uniform(&policy)
        .compile()
        .map_err(|err| format!("--firecracker-seccomp {raw}: {err}"))?;
    Ok(VmmFilter::Policy(policy))
}

impl FirecrackerSettings {
    /// The firecracker binary, or why there is none (one line, for "backend unavailable").
    pub fn firecracker_binary(&self) -> Result<PathBuf, String> {
        binary(
            self.firecracker.as_deref(),
            "firecracker",
            "--firecracker-bin",
        )
    }

    /// The jailer to use, if any: none in direct mode; an explicit `--jailer-bin` must exist.
    pub fn jailer_binary(&self) -> Result<Option<PathBuf>, String> {
        if self.direct {
            return Ok(None);
        }
        match &self.jailer {
            Some(path) => binary(Some(path), "jailer", "--jailer-bin").map(Some),
            None => Ok(find_in_path("jailer")),
        }
    }
}

fn binary(explicit: Option<&Path>, name: &str, flag: &str) -> Result<PathBuf, String> {
    match explicit {
        Some(path) if is_executable(path) => Ok(path.to_owned()),
        Some(path) => Err(format!("{flag} {} is not an executable file", path.display())),
        None => find_in_path(name).ok_or_else(|| {
            format!("no {name} binary: not on PATH and no {flag} given (install Firecracker; see hearth doctor)")
        }),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Firecracker backend of this host, and why it can't create VMs when it can't. Without a
/// binary hearth still gets a backend, to find, stop and remove VMs made earlier (a VMM or
/// jail must not outlive its sandbox because Firecracker was uninstalled).
pub fn firecracker_backend(
    settings: &FirecrackerSettings,
    dirs: &RuntimeDirs,
    images: &VmImages,
) -> (Option<Arc<FirecrackerBackend>>, Option<String>) {
    let (firecracker, mut missing) = match settings.firecracker_binary() {
        Ok(path) => (path, None),
        Err(reason) => (PathBuf::from("firecracker"), Some(reason)),
    };
    let jailer = settings.jailer_binary().unwrap_or_else(|reason| {
        missing.get_or_insert(reason);
        settings.jailer.clone()
    });
    let filter = settings.vmm_filter.clone();
    match build_backend(firecracker, jailer, filter.clone(), dirs, images) {
        Ok(backend) => (Some(backend), missing),
        Err(reason) => {
            // Only a jailer config can be refused (its exec name); direct mode builds.
            let direct =
                build_backend(PathBuf::from("firecracker"), None, filter, dirs, images).ok();
            (direct, Some(missing.unwrap_or(reason)))
        }
    }
}

fn build_backend(
    firecracker: PathBuf,
    jailer: Option<PathBuf>,
    vmm_filter: VmmFilter,
    dirs: &RuntimeDirs,
    images: &VmImages,
) -> Result<Arc<FirecrackerBackend>, String> {
    let mode = match jailer {
        None => LaunchMode::Direct,
        Some(jailer) => LaunchMode::Jailed(JailerConfig {
            jailer,
            firecracker: firecracker.clone(),
            uid: JAILER_UID,
            gid: JAILER_UID,
            chroot_base: dirs.root().join("jail"),
            cgroups: JailCgroups::detect(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }),
    };
    FirecrackerBackend::new(
        FirecrackerConfig {
            firecracker,
            mode,
            vmm_filter,
            runtime: dirs.clone(),
            start_timeout: START_TIMEOUT,
        },
        Arc::new(images.clone()),
    )
    .map(Arc::new)
    .map_err(|err| err.to_string())
}

/// Where built Firecracker kernels live.
pub fn kernels_dir(state_dir: &Path) -> PathBuf {
    VmImages::new(state_dir).firecracker_kernels_dir()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sandbox::backend::vm::{BootKernel, GuestImageSource};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn binaries_come_from_flags_or_path_and_absence_is_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let fc = tmp.path().join("firecracker");
        std::fs::write(&fc, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let settings = FirecrackerSettings {
            firecracker: Some(fc.clone()),
            jailer: Some(tmp.path().join("jailer")),
            direct: false,
            vmm_filter: VmmFilter::Builtin,
        };
        assert_eq!(settings.firecracker_binary().unwrap(), fc);
        let err = settings.jailer_binary().unwrap_err();
        assert!(
            err.contains("--jailer-bin") && err.contains("not an executable"),
            "{err}"
        );
        // Direct mode never looks for a jailer.
        let direct = FirecrackerSettings {
            direct: true,
            ..settings.clone()
        };
        assert_eq!(direct.jailer_binary().unwrap(), None);
        let dirs = RuntimeDirs::open(tmp.path().join("run")).unwrap();
        let images = VmImages::new(tmp.path());
        let (backend, missing) = firecracker_backend(&direct, &dirs, &images);
        assert!(matches!(backend.unwrap().config().mode, LaunchMode::Direct));
        assert_eq!(missing, None);

        // Without the binary there is still a backend (to remove old VMs), and the reason.
        let gone = FirecrackerSettings {
            firecracker: Some(tmp.path().join("nope")),
            direct: true,
            ..FirecrackerSettings::default()
        };
        let (_, missing) = firecracker_backend(&gone, &dirs, &images);
        let err = missing.unwrap();
        assert!(
            err.contains("--firecracker-bin") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn the_image_needs_the_firecracker_kernel_first() {
        let tmp = tempfile::tempdir().unwrap();
        let err = VmImages::new(tmp.path())
            .current(BootKernel::Firecracker)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("hearth image kernel --firecracker"),
            "{err}"
        );
    }

    #[test]
    fn the_vmm_filter_is_builtin_a_seccompiler_file_or_a_policy_and_is_compiled_up_front() {
        assert!(matches!(
            parse_vmm_filter("builtin"),
            Ok(VmmFilter::Builtin)
        ));
        // The `audit` profile has one action besides its default, which a uniform VMM filter
        // can express; `default` needs ENOSYS for clone3 as well and is refused, by name.
        assert!(matches!(
            parse_vmm_filter("audit"),
            Ok(VmmFilter::Policy(_))
        ));
        let err = parse_vmm_filter("default").unwrap_err();
        assert!(err.starts_with("--firecracker-seccomp default: "), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let json = tmp.path().join("vmm.json");
        let filter =
            r#"{"default_action":"trap","filter_action":"allow","filter":[{"syscall":"read"}]}"#;
        std::fs::write(
            &json,
            format!(r#"{{"vmm":{filter},"api":{filter},"vcpu":{filter}}}"#),
        )
        .unwrap();
        assert!(matches!(
            parse_vmm_filter(json.to_str().unwrap()),
            Ok(VmmFilter::Json(_))
        ));
        std::fs::write(&json, r#"{"vmm":{"default_action":"nonsense"}}"#).unwrap();
        assert!(parse_vmm_filter(json.to_str().unwrap()).is_err());
        assert!(parse_vmm_filter("/nonexistent/vmm.json").is_err());
    }
}
