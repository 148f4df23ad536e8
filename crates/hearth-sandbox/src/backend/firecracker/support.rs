//! What `hearth doctor` says about Firecracker on this host: the binaries and their versions,
//! and whether KVM can run a guest for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::host_tools::find_in_path;

/// An installed tool and the version it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolVersion {
    pub path: PathBuf,
    /// `Firecracker v1.12.0` -> `1.12.0`; the whole first line when it has no `vX.Y`.
    pub version: String,
}

/// Whether `/dev/kvm` can run a Firecracker guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KvmState {
    Missing,
    NoAccess {
        error: String,
    },
    /// PVM (`kvm_pvm`): opens, but stock guest kernels fail under it.
    Pvm,
    Usable,
}

impl KvmState {
    pub fn is_usable(&self) -> bool {
        matches!(self, Self::Usable)
    }
}

/// Firecracker's prerequisites on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirecrackerSupport {
    pub firecracker: Option<ToolVersion>,
    pub jailer: Option<ToolVersion>,
    pub kvm: KvmState,
}

impl FirecrackerSupport {
    /// Whether `--backend firecracker` can run here (the jailer is optional: direct mode).
    pub fn can_run(&self) -> bool {
        self.firecracker.is_some() && self.kvm.is_usable()
    }

    /// Why not, in one line, when it can't.
    pub fn reason(&self) -> Option<String> {
        match (&self.firecracker, &self.kvm) {
            (None, _) => Some("firecracker is not installed (not on PATH)".to_owned()),
            (_, KvmState::Missing) => Some("/dev/kvm is missing".to_owned()),
            (_, KvmState::NoAccess { error }) => {
                Some(format!("/dev/kvm cannot be opened: {error}"))
            }
            (_, KvmState::Pvm) => {
                Some("/dev/kvm is PVM (kvm_pvm): Firecracker guests cannot run".to_owned())
            }
            (Some(_), KvmState::Usable) => None,
        }
    }
}

/// Looks for `firecracker` and `jailer` on PATH and checks `/dev/kvm`.
pub fn firecracker_support() -> FirecrackerSupport {
    FirecrackerSupport {
        firecracker: find_in_path("firecracker").and_then(|p| tool_version(&p)),
        jailer: find_in_path("jailer").and_then(|p| tool_version(&p)),
        kvm: kvm_state(Path::new("/dev/kvm"), Path::new("/sys/module/kvm_pvm")),
    }
}

/// Runs `BINARY --version` and reads the version off its first line.
pub fn tool_version(binary: &Path) -> Option<ToolVersion> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| ToolVersion {
        path: binary.to_owned(),
        version: parse_version(line),
    })
}

/// The first `vX.Y...` or `X.Y...` word of a `--version` line, without the `v`.
fn parse_version(line: &str) -> String {
    line.split_whitespace()
        .map(|w| w.strip_prefix('v').unwrap_or(w))
        .find(|w| {
            let mut parts = w.split('.');
            parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
                && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
        })
        .unwrap_or(line)
        .to_owned()
}

fn kvm_state(dev: &Path, pvm_module: &Path) -> KvmState {
    if !dev.exists() {
        return KvmState::Missing;
    }
    if let Err(err) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return KvmState::NoAccess {
            error: err.to_string(),
        };
    }
    if pvm_module.exists() {
        return KvmState::Pvm;
    }
    KvmState::Usable
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn versions_are_read_from_the_first_line() {
        let tmp = tempfile::tempdir().unwrap();
        let fc = script(
            tmp.path(),
            "firecracker",
            "echo 'Firecracker v1.12.1'; echo",
        );
        assert_eq!(tool_version(&fc).unwrap().version, "1.12.1");
        let jailer = script(tmp.path(), "jailer", "echo 'Jailer v1.12.1' >&2");
        assert_eq!(tool_version(&jailer).unwrap().version, "1.12.1");
        let odd = script(tmp.path(), "odd", "echo 'built from main'");
        assert_eq!(tool_version(&odd).unwrap().version, "built from main");
        let broken = script(tmp.path(), "broken", "exit 1");
        assert_eq!(tool_version(&broken), None);
        assert_eq!(tool_version(&tmp.path().join("missing")), None);
    }

    #[test]
    fn kvm_states_and_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("kvm");
        let pvm = tmp.path().join("kvm_pvm");
        assert_eq!(kvm_state(&dev, &pvm), KvmState::Missing);
        std::fs::write(&dev, b"").unwrap();
        assert_eq!(kvm_state(&dev, &pvm), KvmState::Usable);
        std::fs::create_dir(&pvm).unwrap();
        assert_eq!(kvm_state(&dev, &pvm), KvmState::Pvm);

        let fc = ToolVersion {
            path: "/usr/bin/firecracker".into(),
            version: "1.12.1".into(),
        };
        let support = FirecrackerSupport {
            firecracker: Some(fc),
            jailer: None,
            kvm: KvmState::Pvm,
        };
        assert!(!support.can_run());
        assert!(support.reason().unwrap().contains("PVM"));
        let usable = FirecrackerSupport {
            kvm: KvmState::Usable,
            ..support
        };
        assert!(usable.can_run() && usable.reason().is_none());
    }

    #[test]
    fn this_host_has_no_firecracker() {
        // No Firecracker can be installed on these machines; doctor must say so, not crash.
        let support = firecracker_support();
        if support.firecracker.is_none() {
            assert!(!support.can_run());
            assert!(support.reason().unwrap().contains("firecracker"));
        }
    }
}
