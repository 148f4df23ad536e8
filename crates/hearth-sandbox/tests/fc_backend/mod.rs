//! The stand-in VMM process the Firecracker backend tests start, and their fixture.
//!
//! Firecracker can't run here, so the backend is pointed at a `firecracker` script that execs
//! the test binary as a fake VMM (its `fake_firecracker_vmm` test, which calls
//! [`serve_if_asked`] and does nothing in a normal test run). The fake is a real process the
//! backend spawns, in a network namespace the test made: it serves Firecracker's API on the
//! `--api-sock` it is given (refusing any request outside Firecracker's spec or order), records
//! its argv, netns, session and every request to a file, and serves the vsock handshake after
//! `InstanceStart`. Environment variables in the script make it die, refuse a call or exit
//! like a seccomp fault.

#![allow(dead_code, unused_imports)]

pub use std::io::Write;
pub use std::net::Ipv4Addr;
pub use std::os::unix::fs::PermissionsExt;
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command};
pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use base64::Engine as _;
pub use hearth_sandbox::backend::firecracker::jailer::JailCgroups;
pub use hearth_sandbox::backend::firecracker::process::ProcessStamp;
pub use hearth_sandbox::backend::firecracker::{
    saved_files, FirecrackerBackend, FirecrackerConfig, FirecrackerError, JailerConfig, LaunchMode,
    VmmFilter,
};
pub use hearth_sandbox::backend::vm::{GuestNet, VmGuestConfig, VmImagePaths};
pub use hearth_sandbox::backend::{GuestEndpoint, LaunchContext, SandboxBackend};
pub use hearth_sandbox::dirs::{RuntimeDirs, SandboxDirs};
pub use hearth_sandbox::spec::{ResourceLimits, SandboxSpec};
pub use hearth_sandbox::SandboxId;
pub use hearth_seccomp::audit::VmmFault;
pub use hearth_test_support::firecracker::fake_api::{Behaviour, FakeApi, Recorded};
pub use hearth_test_support::firecracker::jailer::{fake_jailer, JailerTrace, JAIL_ROOT as ROOT};
pub use serde::{Deserialize, Serialize};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const RECORD: &str = "HEARTH_FAKE_FC_RECORD";
pub const DIE_AT: &str = "HEARTH_FAKE_FC_DIE_AT";
pub const FAIL_AT: &str = "HEARTH_FAKE_FC_FAIL_AT";
pub const FAULT_AT: &str = "HEARTH_FAKE_FC_SECCOMP_FAULT_AT";

/// The first line the fake VMM records.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub args: Vec<String>,
    pub netns: String,
    pub pid: u32,
    pub sid: i32,
}

/// The fake VMM's entry point; a no-op unless the backend started this binary as `firecracker`.
pub fn serve_if_asked() {
    let Ok(record) = std::env::var(RECORD) else {
        return;
    };
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    // Set by the fake jailer: the jail's root, which the real jailer would chroot into.
    let root = std::env::var_os(ROOT).map(PathBuf::from);
    let resolve = move |path: &str| match &root {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    };
    let api_sock = resolve(&args[args.iter().position(|a| a == "--api-sock").unwrap() + 1]);
    let write_line = {
        let record = record.clone();
        move |line: String| {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&record)
                .unwrap();
            writeln!(file, "{line}").unwrap();
        }
    };
    let header = Header {
        args: args.clone(),
        netns: std::fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        pid: std::process::id(),
        sid: nix::unistd::getsid(None).unwrap().as_raw(),
    };
    write_line(serde_json::to_string(&header).unwrap());

    let mut behaviour = Behaviour::default();
    if let Ok(path) = std::env::var(FAIL_AT) {
        behaviour
            .fail
            .insert(path, "Refused by the fake for this test".to_owned());
    }
    let die_at = std::env::var(DIE_AT).ok();
    let fault_at = std::env::var(FAULT_AT).ok();
    let logger: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut api = FakeApi::new(behaviour);
    if let Some(root) = std::env::var_os(ROOT) {
        api = api.chrooted(root.into());
    }
    runtime.block_on(async move {
        let api = api.on_record(move |r: &Recorded| {
            write_line(serde_json::to_string(r).unwrap());
            if r.path == "/logger" {
                let path = r.body.as_ref().and_then(|b| b["log_path"].as_str());
                *logger.lock().unwrap() = path.map(&resolve);
            }
            if die_at.as_deref() == Some(r.path.as_str()) {
                std::process::exit(1);
            }
            if fault_at.as_deref() == Some(r.path.as_str()) {
                // What Firecracker's SIGSYS handler does: log the number, exit 148.
                if let Some(log) = logger.lock().unwrap().as_ref() {
                    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
                    writeln!(
                        file,
                        "[vmm:ERROR] Shutting down VM after intercepting a bad syscall (41)"
                    )
                    .unwrap();
                }
                std::process::exit(148);
            }
        });
        api.serve(&api_sock);
        std::future::pending::<()>().await;
    });
}

/// A network namespace made for the test, held by a sleeping process.
pub struct Netns(pub Child);

impl Netns {
    pub fn new() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .unwrap();
        let netns = Self(child);
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        // unshare execs sleep once the namespace exists.
        while std::fs::read_link(netns.path()).is_ok_and(|l| l == own) {
            std::thread::sleep(Duration::from_millis(5));
        }
        netns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }

    pub fn link(&self) -> String {
        std::fs::read_link(self.path())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub runtime: RuntimeDirs,
    pub dirs: SandboxDirs,
    pub netns: Netns,
    pub spec: SandboxSpec,
    pub record: PathBuf,
}

impl Drop for Fixture {
    /// A test that failed before removing its VM leaves the fake VMM running: kill every
    /// process started with a path under this fixture's temp dir.
    fn drop(&mut self) {
        let mine = self.tmp.path().display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
            if pid != me && String::from_utf8_lossy(&cmdline).contains(mine.as_str()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Fixture {
    pub fn new(id: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        let id = SandboxId::parse(id).unwrap();
        let dirs = runtime.create_sandbox(&id, None).unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir(&images).unwrap();
        for name in ["vmlinux", "initramfs.cpio.gz", "rootfs.ext4"] {
            std::fs::write(images.join(name), name).unwrap();
        }
        let spec = SandboxSpec {
            id,
            limits: ResourceLimits::default(),
            workspace: None,
            seccomp: Some(hearth_sandbox::seccomp::SpecSeccomp::Bpf(vec![
                0xde, 0xad, 0xbe, 0xef,
            ])),
            net: Default::default(),
            guest_seccomp: None,
            backend: hearth_sandbox::backend::BackendKind::Firecracker,
            template: None,
        };
        let record = tmp.path().join("record.jsonl");
        Self {
            runtime,
            dirs,
            netns: Netns::new(),
            spec,
            record,
            tmp,
        }
    }

    /// A backend whose `firecracker` runs the fake VMM with `env` set.
    pub fn backend(&self, env: &[(&str, &str)], start_timeout: Duration) -> FirecrackerBackend {
        let exe = std::env::current_exe().unwrap();
        let mut text = String::new();
        for (key, value) in env {
            text.push_str(&format!("export {key}='{value}'\n"));
        }
        text.push_str(&format!(
            "exec '{}' fake_firecracker_vmm --exact --nocapture -- \"$@\"\n",
            exe.display()
        ));
        self.backend_running(&text, start_timeout)
    }

    /// A backend whose `firecracker` is a shell script with this body.
    pub fn backend_running(&self, body: &str, start_timeout: Duration) -> FirecrackerBackend {
        let script = self.tmp.path().join("firecracker");
        // `--version` as Firecracker answers it (a snapshot restores only on the same one).
        let text = format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'Firecracker v1.17.0-dev'; exit 0; }}\n\
             export {RECORD}='{}'\n{body}",
            self.record.display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let filters = hearth_sandbox::backend::firecracker::find_shared_file(
            "x86_64-unknown-linux-musl.json",
            &[env!("CARGO_MANIFEST_DIR").into()],
        )
        .unwrap();
        FirecrackerBackend::new(
            FirecrackerConfig {
                firecracker: script,
                mode: LaunchMode::Direct,
                vmm_filter: VmmFilter::Json(std::fs::read_to_string(filters).unwrap()),
                runtime: self.runtime.clone(),
                start_timeout,
            },
            self.images(),
        )
        .unwrap()
    }

    /// A jailed backend whose `jailer` is the stand-in ([`fake_jailer`]), recording its argv
    /// and making the cgroup directory under [`Self::cgroup_root`].
    pub fn jailed_backend(&self, uid: u32) -> FirecrackerBackend {
        let direct = self.backend(&[], LONG);
        let (args, cgroups) = (self.jailer_args(), self.cgroup_root());
        let trace = JailerTrace {
            args: Some(&args),
            cgroup_root: Some(&cgroups),
        };
        let jailer = fake_jailer(self.tmp.path(), trace);
        let config = direct.config();
        FirecrackerBackend::new(
            FirecrackerConfig {
                mode: LaunchMode::Jailed(JailerConfig {
                    jailer,
                    firecracker: config.firecracker.clone(),
                    uid,
                    gid: uid,
                    chroot_base: self.runtime.root().join("jail"),
                    cgroups: JailCgroups::V2,
                    cgroup_root: self.cgroup_root(),
                }),
                ..config.clone()
            },
            self.images(),
        )
        .unwrap()
    }

    /// No image store: the fixture passes its image paths (the fake VMM boots nothing).
    pub fn images(&self) -> std::sync::Arc<dyn hearth_sandbox::backend::vm::GuestImageSource> {
        std::sync::Arc::new(hearth_sandbox::backend::vm::NoGuestImages)
    }

    pub fn jailer_args(&self) -> PathBuf {
        self.tmp.path().join("jailer.args")
    }

    pub fn cgroup_root(&self) -> PathBuf {
        self.tmp.path().join("cgroup")
    }

    pub fn ctx(&self) -> LaunchContext {
        let images = self.tmp.path().join("images");
        LaunchContext {
            dirs: self.dirs.clone(),
            netns_path: self.netns.path(),
            guest_binary: "/nonexistent/hearth-guest".into(),
            resolver: None,
            net: None,
            vm_image: Some(VmImagePaths {
                kernel: images.join("vmlinux"),
                initrd: images.join("initramfs.cpio.gz"),
                rootfs: images.join("rootfs.ext4"),
            }),
            ids: None,
        }
    }

    /// With the guest's network: the netns gets the `eth0` (holding the guest's address)
    /// that `FirewallManager` would have made, which the backend bridges to `tap0`.
    pub fn ctx_net(&self) -> LaunchContext {
        let net = net();
        let ns = self.netns.path();
        for args in [
            vec![
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0-peer",
            ],
            vec![
                "addr",
                "add",
                &format!("{}/{}", net.address, net.prefix),
                "dev",
                "eth0",
            ],
        ] {
            let ok = Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .arg("ip")
                .args(&args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        }
        LaunchContext {
            net: Some(net),
            ..self.ctx()
        }
    }

    /// `cat` of a file in the netns's view of /sys (the tap's owner, say).
    pub fn in_netns(&self, cmd: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn header(&self) -> Header {
        let text = std::fs::read_to_string(&self.record).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    /// The API requests of every VMM started so far (each VMM's first line is its header).
    pub fn requests(&self) -> Vec<Recorded> {
        let text = std::fs::read_to_string(&self.record).unwrap();
        text.lines()
            .filter(|l| serde_json::from_str::<Header>(l).is_err())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn net() -> GuestNet {
    GuestNet {
        address: Ipv4Addr::new(10, 202, 0, 2),
        prefix: 30,
        gateway: Ipv4Addr::new(10, 202, 0, 1),
        dns: Ipv4Addr::new(10, 202, 0, 1),
    }
}

pub const LONG: Duration = Duration::from_secs(60);
