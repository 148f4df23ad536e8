//! A tiny OCI bundle run by the real runc, shared by the notify tests and the benchmark.

#![allow(dead_code)] // Each test binary uses a different part.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

/// A bundle in a tempdir: rootfs with host /usr bound read-only, plus runc's state root.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub id: String,
}

impl Bundle {
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hearth-seccomp-")
            .tempdir()
            .expect("tempdir");
        let rootfs = dir.path().join("bundle/rootfs");
        for sub in ["usr", "proc", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(sub)).expect("rootfs dirs");
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            symlink(target, rootfs.join(link)).expect("rootfs symlink");
        }
        fs::create_dir_all(dir.path().join("runc")).expect("runc root");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "hearth-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self { dir, id }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("seccomp.sock")
    }

    /// Writes config.json running `args` under `seccomp` (a runtime-spec `linux.seccomp`).
    pub fn write_config(&self, args: &[&str], seccomp: Value) {
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "hearth-notify",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/usr", "type": "bind", "source": "/usr",
                 "options": ["rbind", "ro", "nosuid", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "size=65536k"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
                "seccomp": seccomp
            }
        });
        let path = self.dir.path().join("bundle/config.json");
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).expect("config.json");
    }

    /// `runc --root <dir>/runc run --bundle <bundle> <id>` in the foreground.
    pub fn run(&self) -> Output {
        Command::new("runc")
            .arg("--root")
            .arg(self.dir.path().join("runc"))
            .args(["run", "--bundle"])
            .arg(self.dir.path().join("bundle"))
            .arg(&self.id)
            .output()
            .expect("runc must be installed (apt-get install runc) and the tests run as root")
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(self.dir.path().join("runc"))
            .args(["delete", "--force", &self.id])
            .output();
    }
}

/// The seccomp section: allow everything, notify on `notified`, hand the fd to `listener`.
pub fn notify_seccomp(listener: &Path, notified: &[&str]) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "listenerPath": listener,
        "listenerMetadata": "hearth-test",
        "syscalls": [{"names": notified, "action": "SCMP_ACT_NOTIFY"}]
    })
}

/// VmRSS of this process in KiB.
pub fn rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}
