//! The Firecracker backend's lifecycle against a stand-in VMM process.
//!
//! Firecracker can't run here, so the backend is pointed at a `firecracker` script that execs
//! this very test binary as a fake VMM (`fake_firecracker_vmm` below, which does nothing in a
//! normal test run). The fake is a real process the backend spawns, in a network namespace
//! the test made: it serves Firecracker's API on the `--api-sock` it is given (refusing any
//! request outside Firecracker's spec or order), records its argv, netns, session and every
//! request to a file, and serves the vsock handshake after `InstanceStart`. Environment
//! variables in the script make it die, refuse a call or exit like a seccomp fault.

mod fc_support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use fc_support::fake_api::{Behaviour, FakeApi, Recorded};
use hearth_sandbox::backend::firecracker::jailer::JailCgroups;
use hearth_sandbox::backend::firecracker::process::ProcessStamp;
use hearth_sandbox::backend::firecracker::{
    saved_files, FirecrackerBackend, FirecrackerConfig, FirecrackerError, JailerConfig, LaunchMode,
    VmmFilter,
};
use hearth_sandbox::backend::vm::{GuestNet, VmGuestConfig, VmImagePaths};
use hearth_sandbox::backend::{GuestEndpoint, LaunchContext, SandboxBackend};
use hearth_sandbox::dirs::{RuntimeDirs, SandboxDirs};
use hearth_sandbox::spec::{ResourceLimits, SandboxSpec};
use hearth_sandbox::SandboxId;
use hearth_seccomp::audit::VmmFault;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RECORD: &str = "HEARTH_FAKE_FC_RECORD";
const DIE_AT: &str = "HEARTH_FAKE_FC_DIE_AT";
const FAIL_AT: &str = "HEARTH_FAKE_FC_FAIL_AT";
const FAULT_AT: &str = "HEARTH_FAKE_FC_SECCOMP_FAULT_AT";
const ROOT: &str = "HEARTH_FAKE_FC_ROOT";

/// The first line the fake VMM records.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    args: Vec<String>,
    netns: String,
    pid: u32,
    sid: i32,
}

/// The fake VMM's entry point; a no-op unless the backend started this binary as `firecracker`.
#[test]
fn fake_firecracker_vmm() {
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
struct Netns(Child);

impl Netns {
    fn new() -> Self {
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

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }

    fn link(&self) -> String {
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

struct Fixture {
    tmp: tempfile::TempDir,
    runtime: RuntimeDirs,
    dirs: SandboxDirs,
    netns: Netns,
    spec: SandboxSpec,
    record: PathBuf,
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
    fn new(id: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = RuntimeDirs::open(tmp.path().join("root")).unwrap();
        let id = SandboxId::parse(id).unwrap();
        let dirs = runtime.create_sandbox(&id).unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir(&images).unwrap();
        for name in ["vmlinux", "initramfs.cpio.gz", "rootfs.ext4"] {
            std::fs::write(images.join(name), name).unwrap();
        }
        let spec = SandboxSpec {
            id,
            limits: ResourceLimits::default(),
            workspace: None,
            seccomp: None,
            net: Default::default(),
            guest_seccomp: Some(vec![0xde, 0xad, 0xbe, 0xef]),
            backend: hearth_sandbox::backend::BackendKind::Firecracker,
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
    fn backend(&self, env: &[(&str, &str)], start_timeout: Duration) -> FirecrackerBackend {
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
    fn backend_running(&self, body: &str, start_timeout: Duration) -> FirecrackerBackend {
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
        FirecrackerBackend::new(FirecrackerConfig {
            firecracker: script,
            mode: LaunchMode::Direct,
            vmm_filter: VmmFilter::Json(std::fs::read_to_string(filters).unwrap()),
            runtime: self.runtime.clone(),
            start_timeout,
        })
        .unwrap()
    }

    /// A jailed backend whose `jailer` is a stand-in: it records its argv, makes the cgroup
    /// directory, joins the netns and runs the exec file with the jail root where the real
    /// jailer would chroot (the fake VMM resolves its paths under it). It stays root: the
    /// privilege drop is the real jailer's, but the ownership hearth prepares is checked.
    fn jailed_backend(&self, uid: u32) -> FirecrackerBackend {
        let direct = self.backend(&[], LONG);
        let jailer = self.tmp.path().join("jailer");
        let script = format!(
            r#"#!/bin/sh
printf '%s\n' "$@" > '{args}'
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2;;
    --exec-file) exec_file=$2; shift 2;;
    --chroot-base-dir) base=$2; shift 2;;
    --netns) netns=$2; shift 2;;
    --) shift; break;;
    *) shift 2;;
  esac
done
root="$base/$(basename "$exec_file")/$id/root"
[ -d "$root" ] || {{ echo "no jail root $root" >&2; exit 1; }}
mkdir -p '{cgroups}/firecracker/'"$id"
export {ROOT}="$root"
exec nsenter --net="$netns" "$exec_file" --id="$id" "$@"
"#,
            args = self.jailer_args().display(),
            cgroups = self.cgroup_root().display(),
        );
        std::fs::write(&jailer, script).unwrap();
        std::fs::set_permissions(&jailer, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = direct.config();
        FirecrackerBackend::new(FirecrackerConfig {
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
        })
        .unwrap()
    }

    fn jailer_args(&self) -> PathBuf {
        self.tmp.path().join("jailer.args")
    }

    fn cgroup_root(&self) -> PathBuf {
        self.tmp.path().join("cgroup")
    }

    fn ctx(&self) -> LaunchContext<'_> {
        let images = self.tmp.path().join("images");
        LaunchContext {
            dirs: &self.dirs,
            netns_path: self.netns.path(),
            guest_binary: "/nonexistent/hearth-guest".into(),
            resolver: None,
            net: None,
            vm_image: Some(VmImagePaths {
                kernel: images.join("vmlinux"),
                initrd: images.join("initramfs.cpio.gz"),
                rootfs: images.join("rootfs.ext4"),
            }),
        }
    }

    /// With the guest's network: the netns gets the `eth0` (holding the guest's address)
    /// that `FirewallManager` would have made, which the backend bridges to `tap0`.
    fn ctx_net(&self) -> LaunchContext<'_> {
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
    fn in_netns(&self, cmd: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn header(&self) -> Header {
        let text = std::fs::read_to_string(&self.record).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    /// The API requests of every VMM started so far (each VMM's first line is its header).
    fn requests(&self) -> Vec<Recorded> {
        let text = std::fs::read_to_string(&self.record).unwrap();
        text.lines()
            .filter(|l| serde_json::from_str::<Header>(l).is_err())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn net() -> GuestNet {
    GuestNet {
        address: Ipv4Addr::new(10, 202, 0, 2),
        prefix: 30,
        gateway: Ipv4Addr::new(10, 202, 0, 1),
        dns: Ipv4Addr::new(10, 202, 0, 1),
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn start_configures_the_vm_in_order_and_remove_leaves_nothing() {
    let fx = Fixture::new("fc-life");
    let backend = fx.backend(&[], LONG);
    let id = fx.spec.id.clone();
    let endpoint = backend.start_vm(&fx.spec, &fx.ctx_net()).unwrap();
    assert_eq!(
        endpoint,
        GuestEndpoint::UnixSocket {
            path: fx.dirs.guest_socket()
        }
    );

    // The VMM ran with hearth's flags, in the sandbox's netns, in a session of its own, naming
    // its files under the mount view where it sees its vm/ dir.
    let header = fx.header();
    let vm = fx.dirs.vm_dir();
    let view = fx.runtime.vmm_view_dir();
    let arg =
        |flag: &str| header.args[header.args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(arg("--api-sock"), view.join("api.sock").to_str().unwrap());
    assert_eq!(
        arg("--seccomp-filter"),
        view.join("seccomp.bpf").to_str().unwrap()
    );
    assert!(vm.join("api.sock").exists(), "the host finds it in vm/");
    assert_eq!(arg("--id"), "fc-life");
    assert_eq!(header.netns, fx.netns.link());
    assert_eq!(header.sid, i32::try_from(header.pid).unwrap());
    // The tap Firecracker attaches to was made by hearth and bridged to the sandbox's link,
    // whose address moved to the guest.
    assert!(fx.in_netns("ip -o link show tap0").contains("master br0"));
    assert!(fx.in_netns("ip -o link show eth0").contains("master br0"));
    assert!(!fx.in_netns("ip -o addr show eth0").contains("10.202.0.2"));
    let stamp = ProcessStamp::read(&fx.dirs.vm_pid_file()).unwrap().unwrap();
    assert_eq!(stamp.pid, header.pid);

    let sequence: Vec<String> = fx
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| {
            assert_eq!(r.status, 204, "{r:?}");
            format!("{} {}", r.method, r.path)
        })
        .collect();
    assert_eq!(
        sequence,
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/config",
            "PUT /network-interfaces/eth0",
            "PUT /vsock",
            "PUT /actions",
        ]
    );
    let boot = fx
        .requests()
        .into_iter()
        .find(|r| r.path == "/boot-source")
        .unwrap();
    let args = boot.body.unwrap()["boot_args"].as_str().unwrap().to_owned();
    assert!(args.contains("hearth.transport=vsock:1024"), "{args}");
    assert!(
        args.contains("hearth.net=10.202.0.2/30,10.202.0.1"),
        "{args}"
    );

    // The config drive carries the hostname and the guest's seccomp program.
    let image = std::fs::read(fx.dirs.vm_config_img()).unwrap();
    let end = image.iter().position(|&b| b == 0).unwrap();
    let doc: VmGuestConfig = serde_json::from_slice(&image[..end]).unwrap();
    assert_eq!(doc.hostname, "fc-life");
    let bpf = base64::engine::general_purpose::STANDARD
        .decode(doc.seccomp_bpf_b64.unwrap())
        .unwrap();
    assert_eq!(bpf, [0xde, 0xad, 0xbe, 0xef]);

    assert!(backend.is_running(&id).unwrap());
    assert_eq!(backend.list().unwrap(), ["fc-life"]);

    // The guest is reached through Firecracker's vsock socket.
    let mut guest = backend.guest_connector(&id).connect().await.unwrap();
    guest.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    guest.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");

    backend.pause(&id).await.unwrap();
    backend.resume(&id).await.unwrap();
    let snapshot = backend.snapshot(&id).await.unwrap();
    assert!(snapshot.state.exists() && snapshot.memory.exists());
    let tail: Vec<String> = fx
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .skip(9)
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect();
    assert_eq!(
        tail,
        [
            "PATCH /vm 204",
            "PATCH /vm 204",
            "PATCH /vm 204",
            "PUT /snapshot/create 204",
            "PATCH /vm 204"
        ]
    );

    // Removal by another backend instance (a restarted hearth) goes by the pid file.
    let other = fx.backend(&[], LONG);
    tokio::task::block_in_place(|| other.remove(&id)).unwrap();
    assert!(!stamp.is_alive());
    assert!(!vm.exists());
    assert!(!backend.is_running(&id).unwrap());
    assert!(other.list().unwrap().is_empty());
    tokio::task::block_in_place(|| backend.remove(&id)).unwrap(); // idempotent; reaps its child
    let err = backend.pause(&id).await.unwrap_err();
    assert!(matches!(err, FirecrackerError::NotRunning { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_snapshot_restores_into_another_sandbox_and_its_manifest_is_checked() {
    let fx = Fixture::new("fc-save");
    let backend = fx.backend(&[], LONG);
    let id = fx.spec.id.clone();
    tokio::task::block_in_place(|| backend.start_vm(&fx.spec, &fx.ctx())).unwrap();
    let dest = fx.tmp.path().join("snap");
    // One snapshot of a VM at a time (another process holding the lock stands for a second
    // `hearth sandbox snapshot`): refused before anything is made.
    let lock = std::fs::File::create(fx.dirs.vm_dir().join("snapshot.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let err = backend.save_snapshot(&id, &dest).await.unwrap_err();
    assert!(
        matches!(err, FirecrackerError::SnapshotBusy { .. }),
        "{err}"
    );
    assert!(!dest.exists());
    drop(held);
    let manifest = backend.save_snapshot(&id, &dest).await.unwrap();
    assert_eq!(
        manifest.firecracker_version, "1.17.0-dev",
        "the running VMM's"
    );
    assert_eq!(
        manifest.launch,
        hearth_sandbox::backend::firecracker::LaunchKind::Direct
    );
    assert_eq!(manifest.memory_mib, fx.spec.limits.memory.0 >> 20);
    assert!(!manifest.nic);
    assert_eq!(manifest.rootfs, fx.tmp.path().join("images/rootfs.ext4"));
    assert!(!fx.dirs.vm_dir().join("snapshot.mem").exists(), "moved out");
    let err = backend.save_snapshot(&id, &dest).await.unwrap_err();
    assert!(
        matches!(err, FirecrackerError::SnapshotExists { .. }),
        "{err}"
    );
    assert!(
        dest.join("vm.mem").exists(),
        "a refused save leaves the first"
    );
    tokio::task::block_in_place(|| backend.remove(&id)).unwrap();

    // Another sandbox resumes it: logger, metrics, then the load of the saved files.
    assert_eq!(backend.check_snapshot(&dest).unwrap(), manifest);
    let other = SandboxId::parse("fc-restored").unwrap();
    let dirs = fx.runtime.create_sandbox(&other).unwrap();
    let spec = SandboxSpec {
        id: other.clone(),
        ..fx.spec.clone()
    };
    let ctx = LaunchContext {
        dirs: &dirs,
        ..fx.ctx()
    };
    tokio::task::block_in_place(|| backend.restore_vm(&spec, &ctx, &saved_files(&dest))).unwrap();
    let requests: Vec<Recorded> = fx
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    let restore: Vec<String> = requests[requests.len() - 3..]
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect();
    assert_eq!(
        restore,
        [
            "PUT /logger 204",
            "PUT /metrics 204",
            "PUT /snapshot/load 204"
        ]
    );
    let load = requests.last().unwrap().body.clone().unwrap();
    assert_eq!(
        load["snapshot_path"],
        dest.join("vm.state").to_str().unwrap()
    );
    let mut guest = backend.guest_connector(&other).connect().await.unwrap();
    guest.write_all(b"again").await.unwrap();
    let mut echoed = [0u8; 5];
    guest.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"again");
    tokio::task::block_in_place(|| backend.remove(&other)).unwrap();

    // A snapshot from another hearth is refused, naming what differs.
    let path = dest.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let older = text.replace(env!("CARGO_PKG_VERSION"), "0.0.1");
    std::fs::write(&path, older).unwrap();
    let err = backend.check_snapshot(&dest).unwrap_err();
    assert!(
        matches!(
            err,
            FirecrackerError::SnapshotMismatch {
                field: "hearth",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0.0.1"), "{err}");
}

/// After a failed start: no VMM process, no vm/ dir, nothing listed.
fn assert_nothing_left(fx: &Fixture, backend: &FirecrackerBackend) {
    let header = fx.header();
    let gone = !Path::new(&format!("/proc/{}", header.pid)).exists();
    assert!(gone, "VMM {} still exists", header.pid);
    assert!(!fx.dirs.vm_dir().exists());
    assert!(fx.dirs.base().exists(), "the sandbox dir is the caller's");
    assert!(backend.list().unwrap().is_empty());
}

#[test]
fn a_vmm_dying_during_configuration_fails_start_and_is_cleaned_up() {
    let fx = Fixture::new("fc-dies");
    let backend = fx.backend(&[(DIE_AT, "/boot-source")], LONG);
    let err = backend.start_vm(&fx.spec, &fx.ctx()).unwrap_err();
    match &err {
        FirecrackerError::VmmExited { status, log, .. } => {
            assert!(status.contains("exit status: 1"), "{status}");
            assert_eq!(log, &fx.dirs.vm_log());
        }
        other => panic!("{other}"),
    }
    assert_nothing_left(&fx, &backend);
}

#[test]
fn a_refused_call_fails_start_kills_the_vmm_and_cleans_up() {
    let fx = Fixture::new("fc-refused");
    let backend = fx.backend(&[(FAIL_AT, "/network-interfaces/eth0")], LONG);
    let err = backend.start_vm(&fx.spec, &fx.ctx_net()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("PUT /network-interfaces/eth0") && text.contains("Refused by the fake"),
        "{text}"
    );
    assert_nothing_left(&fx, &backend);
}

#[test]
fn a_vmm_that_never_serves_its_socket_times_out_and_is_cleaned_up() {
    let fx = Fixture::new("fc-silent");
    // A VMM that records who it is, then never opens its API socket.
    let header = r#"{"args":[],"netns":"","pid":'$$',"sid":0}"#;
    let backend = fx.backend_running(
        &format!("echo '{header}' >> \"${RECORD}\"\nexec sleep 600\n"),
        Duration::from_millis(300),
    );
    let err = backend.start_vm(&fx.spec, &fx.ctx()).unwrap_err();
    assert!(
        matches!(err, FirecrackerError::StartTimeout { .. }),
        "{err}"
    );
    assert_nothing_left(&fx, &backend);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_seccomp_fault_is_exposed_with_exit_status_148() {
    let fx = Fixture::new("fc-fault");
    let backend = fx.backend(&[(FAULT_AT, "/vm")], LONG);
    let id = fx.spec.id.clone();
    backend.start_vm(&fx.spec, &fx.ctx()).unwrap();
    assert!(backend.vmm_exit(&id).is_none(), "still running");
    // The VMM "hits a filtered syscall" while pausing.
    assert!(backend.pause(&id).await.is_err());
    let exit = tokio::task::block_in_place(|| backend.wait_vmm_exit(&id)).unwrap();
    assert_eq!(exit.exit_status(), 148);
    assert_eq!(exit.fault(), VmmFault::Syscall(41));
    assert!(!backend.is_running(&id).unwrap());
    // A process that did not spawn the VMM has no status, but the log still names the call.
    let other = fx.backend(&[], LONG);
    assert!(other.vmm_exit(&id).is_none());
    assert_eq!(
        VmmFault::from_exit(-1, &other.vmm_log_tail(&id)),
        VmmFault::Syscall(41)
    );
    tokio::task::block_in_place(|| backend.remove(&id)).unwrap();
    assert!(!fx.dirs.vm_dir().exists());
}

#[test]
fn a_second_start_of_the_same_sandbox_is_refused_without_touching_the_first() {
    let fx = Fixture::new("fc-twice");
    let backend = fx.backend(&[], LONG);
    backend.start_vm(&fx.spec, &fx.ctx()).unwrap();
    let err = backend.start_vm(&fx.spec, &fx.ctx()).unwrap_err();
    assert!(matches!(err, FirecrackerError::Dirs(_)), "{err}");
    assert!(backend.is_running(&fx.spec.id).unwrap());
    backend.remove(&fx.spec.id).unwrap();
    assert!(!backend.is_running(&fx.spec.id).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restores_into_another_sandbox_and_a_bad_one_leaves_nothing() {
    let fx = Fixture::new("fc-source");
    let backend = fx.backend(&[], LONG);
    let source = fx.spec.id.clone();
    backend.start_vm(&fx.spec, &fx.ctx()).unwrap();
    let snapshot = backend.snapshot(&source).await.unwrap();

    let clone_id = SandboxId::parse("fc-clone").unwrap();
    let clone_dirs = fx.runtime.create_sandbox(&clone_id).unwrap();
    let clone_spec = SandboxSpec {
        id: clone_id.clone(),
        ..fx.spec.clone()
    };
    let ctx = LaunchContext {
        dirs: &clone_dirs,
        ..fx.ctx()
    };
    tokio::task::block_in_place(|| backend.restore_vm(&clone_spec, &ctx, &snapshot)).unwrap();
    // The clone's guest answers on the clone's own vsock socket.
    let mut guest = backend.guest_connector(&clone_id).connect().await.unwrap();
    guest.write_all(b"clone").await.unwrap();
    let mut echoed = [0u8; 5];
    guest.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"clone");
    assert_eq!(backend.list().unwrap(), ["fc-clone", "fc-source"]);
    tokio::task::block_in_place(|| backend.remove(&clone_id)).unwrap();

    // Firecracker refusing the snapshot (another version, say): a clear error, nothing left.
    let refusing = fx.backend(&[(FAIL_AT, "/snapshot/load")], LONG);
    let err = tokio::task::block_in_place(|| refusing.restore_vm(&clone_spec, &ctx, &snapshot))
        .unwrap_err();
    assert!(err.to_string().contains("PUT /snapshot/load"), "{err}");
    assert!(!clone_dirs.vm_dir().exists());
    assert_eq!(refusing.list().unwrap(), ["fc-source"]);
    tokio::task::block_in_place(|| backend.remove(&source)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn jailed_start_puts_everything_in_the_jail_for_the_vmm_and_remove_clears_it() {
    use std::os::unix::fs::MetadataExt;
    const UID: u32 = 64_321;
    let fx = Fixture::new("fc-jail");
    let backend = fx.jailed_backend(UID);
    let id = fx.spec.id.clone();
    tokio::task::block_in_place(|| backend.start_vm(&fx.spec, &fx.ctx_net())).unwrap();

    let jail = fx.runtime.root().join("jail/firecracker/fc-jail");
    let root = jail.join("root");
    let jailer_args = std::fs::read_to_string(fx.jailer_args()).unwrap();
    let jailer_args: Vec<&str> = jailer_args.lines().collect();
    let netns = fx.netns.path();
    let exec_file = fx.tmp.path().join("firecracker");
    let base = fx.runtime.root().join("jail");
    let expected = [
        "--id",
        "fc-jail",
        "--exec-file",
        exec_file.to_str().unwrap(),
        "--uid",
        "64321",
        "--gid",
        "64321",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--netns",
        netns.to_str().unwrap(),
        "--cgroup-version",
        "2",
        "--cgroup",
        "cpu.max=100000 100000",
        "--",
        "--api-sock",
        "/api.sock",
        "--seccomp-filter",
        "/seccomp.bpf",
    ];
    assert_eq!(jailer_args, expected);
    assert_eq!(fx.header().netns, fx.netns.link());
    // The jailed VMM drops to UID, so the tap it opens must be that uid's.
    let tap = fx.in_netns("ip -d link show tap0");
    assert!(tap.contains("user 64321"), "{tap}");

    // Firecracker was only given paths inside its jail...
    let requests = fx.requests();
    let body = |path: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .and_then(|r| r.body.clone())
            .unwrap()
    };
    assert_eq!(body("/boot-source")["kernel_image_path"], "/vmlinux");
    assert_eq!(body("/boot-source")["initrd_path"], "/initrd.img");
    assert_eq!(body("/drives/rootfs")["path_on_host"], "/rootfs.ext4");
    assert_eq!(body("/drives/config")["path_on_host"], "/config.img");
    assert_eq!(body("/vsock")["uds_path"], "/vsock.sock");
    assert_eq!(body("/logger")["log_path"], "/firecracker.log");
    assert!(requests.iter().all(|r| r.status < 300), "{requests:?}");

    // ...and everything it opens or writes there belongs to its uid; the image is linked.
    for name in [
        "",
        "config.img",
        "firecracker.log",
        "metrics.json",
        "seccomp.bpf",
    ] {
        let meta = std::fs::metadata(root.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (UID, UID), "{name}");
    }
    let kernel = fx.tmp.path().join("images/vmlinux");
    assert_eq!(
        std::fs::metadata(root.join("vmlinux")).unwrap().ino(),
        std::fs::metadata(&kernel).unwrap().ino()
    );
    assert!(fx.dirs.vm_pid_file().exists(), "the pid file stays in vm/");

    // The guest is reached through the jail's vsock socket.
    let connector = backend.guest_connector(&id);
    assert_eq!(connector.uds, root.join("vsock.sock"));
    let mut guest = connector.connect().await.unwrap();
    guest.write_all(b"jailed").await.unwrap();
    let mut echoed = [0u8; 6];
    guest.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"jailed");
    let snapshot = backend.snapshot(&id).await.unwrap();
    assert_eq!(snapshot.state, root.join("snapshot.state"));
    assert!(snapshot.state.exists());

    let cgroup = fx.cgroup_root().join("firecracker/fc-jail");
    assert!(cgroup.exists());
    assert_eq!(backend.list().unwrap(), ["fc-jail"]);
    tokio::task::block_in_place(|| backend.remove(&id)).unwrap();
    assert!(!jail.exists() && !cgroup.exists() && !fx.dirs.vm_dir().exists());
    assert!(kernel.exists(), "the cached image survives its jail");
    assert!(backend.list().unwrap().is_empty());
}

#[test]
fn a_jail_whose_sockets_would_not_fit_sun_path_is_refused_before_anything_is_made() {
    // An id long enough that the jail's sockets (`<tmp>/root/jail/firecracker/<id>/root/
    // vsock.sock`) overflow 107 bytes while the sandbox dir's (`<tmp>/root/sandboxes/<id>/
    // guest/guest.sock`, 6 bytes shorter) still fit: 104 and 110 bytes. `<tmp>` is TMPDIR's
    // `.tmpXXXXXX`.
    let tmp_len = std::env::temp_dir().as_os_str().len() + "/.tmpXXXXXX".len();
    let fx = Fixture::new(&"j".repeat(71usize.saturating_sub(tmp_len).clamp(1, 64)));
    let backend = fx.jailed_backend(64_322);
    let err = backend.start_vm(&fx.spec, &fx.ctx()).unwrap_err();
    assert!(
        matches!(
            err,
            FirecrackerError::Dirs(hearth_sandbox::dirs::DirsError::SocketPathTooLong { .. })
        ),
        "{err}"
    );
    assert!(!fx.dirs.vm_dir().exists());
    assert!(!fx.runtime.root().join("jail").join("firecracker").exists());
    assert!(!fx.jailer_args().exists(), "the jailer never ran");
}
