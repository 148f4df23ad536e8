//! Real QEMU under TCG, without the guest image: QMP against a `-S` VM, the probes, and the
//! backend's whole lifecycle around a tiny multiboot payload that halts (so QEMU runs a real
//! machine while nothing answers on the guest channel).

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use super::*;
use crate::backend::vm::VmGuestConfig;
use crate::backend::{GuestEndpoint, SandboxBackend};
use crate::net::netns;
use crate::spec::{MemoryBytes, ResourceLimits};

const QEMU: &str = "qemu-system-x86_64";

/// A multiboot v1 kernel of 36 bytes: header with the load addresses (flag bit 16), then
/// `cli; hlt; jmp hlt`. QEMU's `-kernel` loads it directly on `pc`.
fn multiboot_kernel() -> Vec<u8> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 0x0001_0000;
    const BASE: u32 = 0x10_0000;
    let checksum = 0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS));
    let mut kernel = Vec::new();
    for word in [MAGIC, FLAGS, checksum, BASE, BASE, 0, 0, BASE + 32] {
        kernel.extend(word.to_le_bytes());
    }
    kernel.extend([0xfa, 0xf4, 0xeb, 0xfd]);
    kernel
}

/// Whether the backend's QEMU for `id` is alive (the trait's check, without a runtime).
fn running(backend: &QemuBackend, id: &SandboxId) -> bool {
    backend
        .vmm(&backend.dirs.sandbox(id))
        .is_some_and(|stamp| stamp.is_alive())
}

/// Runs one of the backend's async calls from a plain test.
fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn tcg_config() -> QemuConfig {
    QemuConfig {
        binary: QEMU.into(),
        accel: Accel::Tcg,
        vsock: false,
        qemu_sandbox: true,
        version: "test".into(),
    }
}

/// A runtime root, a sandbox dir, a network namespace and image files, all the test's own.
struct Fixture {
    _tmp: tempfile::TempDir,
    runtime: RuntimeDirs,
    sandbox: SandboxDirs,
    id: SandboxId,
    netns_name: String,
    netns_path: PathBuf,
    image: vm::VmImagePaths,
}

impl Fixture {
    fn new(tag: &str, kernel: &[u8]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = RuntimeDirs::open(tmp.path().join("run")).unwrap();
        let id = SandboxId::parse(&format!("qemu-{tag}")).unwrap();
        let sandbox = runtime.create_sandbox(&id, None).unwrap();
        sandbox.create_workspace_mount_point().unwrap();
        let netns_name = format!("hearthtest-qemu-{tag}-{}", std::process::id());
        let netns_path = netns::create(&netns_name).unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let image = vm::VmImagePaths {
            kernel: images.join("kernel"),
            initrd: images.join("initrd"),
            rootfs: images.join("rootfs"),
        };
        std::fs::write(&image.kernel, kernel).unwrap();
        std::fs::write(&image.initrd, b"initrd").unwrap();
        std::fs::write(&image.rootfs, vec![0u8; 64 * 1024]).unwrap();
        Self {
            _tmp: tmp,
            runtime,
            sandbox,
            id,
            netns_name,
            netns_path,
            image,
        }
    }

    fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            id: self.id.clone(),
            limits: ResourceLimits {
                memory: MemoryBytes(64 << 20),
                ..ResourceLimits::default()
            },
            workspace: None,
            // A VM's workload filter, as BPF bytes (a rendered file passes through as is).
            seccomp: Some(crate::seccomp::SpecSeccomp::Bpf(vec![1, 2, 3])),
            net: Default::default(),
            guest_seccomp: None,
            backend: crate::backend::BackendKind::Qemu,
            template: None,
        }
    }

    fn ctx(&self) -> LaunchContext {
        LaunchContext {
            dirs: self.sandbox.clone(),
            netns_path: self.netns_path.clone(),
            guest_binary: PathBuf::from("/nonexistent"),
            resolver: None,
            net: None,
            vm_image: Some(self.image.clone()),
            ids: None,
        }
    }

    fn backend(&self) -> QemuBackend {
        QemuBackend::new(
            tcg_config(),
            self.runtime.clone(),
            std::sync::Arc::new(vm::NoGuestImages),
        )
    }

    /// A veth from the host into the namespace, addressed as FirewallManager would; returns
    /// the host's netlink socket (the link goes with the namespace).
    fn add_link(
        &self,
        host_if: &str,
        host_addr: std::net::Ipv4Addr,
        guest_addr: std::net::Ipv4Addr,
    ) -> crate::net::rtnl::Rtnl {
        use std::os::fd::AsFd;
        let mut host = crate::net::rtnl::Rtnl::open("host").unwrap();
        let ns = netns::open_ns(&self.netns_path).unwrap();
        host.create_veth(host_if, "eth0", ns.as_fd()).unwrap();
        let index = host.link_index(host_if).unwrap().unwrap();
        host.set_up(index, host_if, None).unwrap();
        host.replace_address(index, host_if, host_addr, 30).unwrap();
        netns::in_netns(&self.netns_path, |path| {
            let mut inside = crate::net::rtnl::Rtnl::open(&path.display().to_string())?;
            let eth0 = inside.link_index("eth0")?.unwrap();
            inside.set_up(eth0, "eth0", None)?;
            inside.replace_address(eth0, "eth0", guest_addr, 30)?;
            Ok::<_, TapError>(())
        })
        .unwrap();
        host
    }

    /// Whether any process runs with this sandbox's QEMU name on its command line.
    fn qemu_processes(&self) -> usize {
        let needle = format!("hearth-{},", self.id.as_str());
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(&needle))
            .count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.backend().remove_vm(&self.id);
        let _ = netns::remove(&self.netns_name);
    }
}

#[test]
fn qmp_drives_a_real_qemu_and_its_sandbox_option_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("qmp.sock");
    let mut qmp_opt = OsString::from("unix:");
    qmp_opt.push(&socket);
    qmp_opt.push(",server=on,wait=off");
    let mut child = Command::new(QEMU)
        .args(["-accel", "tcg", "-machine", "pc", "-S", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-m", "32"])
        .args(["-sandbox", argv::QEMU_SANDBOX])
        .arg("-qmp")
        .arg(&qmp_opt)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut qmp = loop {
        match Qmp::connect(&socket) {
            Ok(qmp) => break qmp,
            Err(err) => {
                assert!(child.try_wait().unwrap().is_none(), "QEMU exited: {err}");
                assert!(Instant::now() < deadline, "no QMP: {err}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let status = qmp.query_status().unwrap();
    assert_eq!(
        (status.status.as_str(), status.running),
        ("prelaunch", false)
    );
    qmp.cont().unwrap();
    assert!(qmp.query_status().unwrap().running);
    qmp.stop().unwrap();
    assert_eq!(qmp.query_status().unwrap().status, "paused");
    qmp.cont().unwrap();
    assert_eq!(qmp.query_status().unwrap().status, "running");
    let err = qmp.execute("no-such-command", None).unwrap_err();
    assert!(
        matches!(&err, QmpError::Command { class, .. } if class == "CommandNotFound"),
        "{err}"
    );
    qmp.quit().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn probes_find_tcg_working_and_report_kvm_honestly() {
    let tmp = tempfile::tempdir().unwrap();
    support::probe_accel(
        Path::new(QEMU),
        Accel::Tcg,
        tmp.path(),
        Duration::from_secs(60),
    )
    .unwrap();
    let support = QemuSupport::probe(Path::new(QEMU), tmp.path()).unwrap();
    assert!(
        support.version.starts_with("QEMU emulator version"),
        "{support:?}"
    );
    assert!(support.seccomp, "{support:?}");
    assert_eq!(
        support.accel == Accel::Kvm,
        support.kvm == KvmState::Usable,
        "{support:?}"
    );
    assert_eq!(support.vhost_vsock, Path::new("/dev/vhost-vsock").exists());
    // The probe leaves no scratch files behind.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    eprintln!("qemu support here: {support:?}");
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = QemuSupport::probe(Path::new("/nonexistent/qemu"), tmp.path()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/qemu"), "{err}");
}

#[test]
fn lifecycle_start_pause_resume_remove_leaves_nothing() {
    let fx = Fixture::new("life", &multiboot_kernel());
    let backend = fx.backend();
    let endpoint = backend.start_inner(&fx.spec(), &fx.ctx()).unwrap();
    assert_eq!(
        endpoint,
        GuestEndpoint::UnixSocket {
            path: fx.sandbox.guest_socket()
        }
    );
    assert!(running(&backend, &fx.id));
    assert_eq!(
        block(backend.list()).unwrap(),
        vec![fx.id.as_str().to_owned()]
    );

    // QEMU runs in the sandbox's namespace, in a session of its own.
    let stamp = VmmStamp::read(&fx.sandbox.vm_pid_file()).unwrap().unwrap();
    let ns_of = |path: &Path| std::fs::metadata(path).unwrap().ino();
    assert_eq!(
        ns_of(Path::new(&format!("/proc/{}/ns/net", stamp.pid))),
        ns_of(&fx.netns_path)
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(stamp.pid).unwrap());
    assert_eq!(nix::unistd::getsid(Some(pid)).unwrap(), pid);

    // The config drive carries the guest's seccomp filter.
    let drive = std::fs::read(fx.sandbox.vm_config_img()).unwrap();
    assert_eq!(drive.len(), vm::CONFIG_DRIVE_SIZE);
    let end = drive.iter().position(|&b| b == 0).unwrap();
    let config: VmGuestConfig = serde_json::from_slice(&drive[..end]).unwrap();
    assert_eq!(config.seccomp_bpf_b64.as_deref(), Some("AQID"));
    assert_eq!(config.hostname, fx.id.as_str());

    assert_eq!(backend.status(&fx.id).unwrap().status, "running");
    backend.pause(&fx.id).unwrap();
    assert_eq!(backend.status(&fx.id).unwrap().status, "paused");
    backend.resume(&fx.id).unwrap();
    assert_eq!(backend.status(&fx.id).unwrap().status, "running");

    // A paused VM is removed just the same.
    backend.pause(&fx.id).unwrap();
    backend.remove_vm(&fx.id).unwrap();
    assert!(!stamp.is_alive());
    assert!(!fx.sandbox.vm_dir().exists());
    assert_eq!(fx.qemu_processes(), 0);
    assert!(!running(&backend, &fx.id));
    assert!(block(backend.list()).unwrap().is_empty());
    backend.remove_vm(&fx.id).unwrap(); // already gone: fine
    assert!(matches!(
        backend.pause(&fx.id),
        Err(QemuError::NotRunning { .. })
    ));
}

#[test]
fn qemu_that_exits_at_once_is_a_clear_error_and_leaves_nothing() {
    // Not a kernel QEMU can load: QEMU exits during machine setup.
    let fx = Fixture::new("bad", b"this is not a kernel");
    let backend = fx.backend();
    let err = backend.start_inner(&fx.spec(), &fx.ctx()).unwrap_err();
    match &err {
        QemuError::Exited { status, tail, .. } => {
            assert!(status.contains("exit status: 1"), "{err}");
            assert!(!tail.is_empty(), "{err}");
        }
        other => panic!("expected Exited, got {other}"),
    }
    eprintln!("{err}");
    assert!(!fx.sandbox.vm_dir().exists());
    assert_eq!(fx.qemu_processes(), 0);
    // The rest of the sandbox directory is the caller's, untouched.
    assert!(fx.sandbox.guest_dir().exists());
}

#[test]
fn missing_image_is_refused_before_anything_is_made() {
    let fx = Fixture::new("noimg", &multiboot_kernel());
    let backend = fx.backend();
    let mut ctx = fx.ctx();
    ctx.vm_image = None;
    assert!(matches!(
        backend.start_inner(&fx.spec(), &ctx),
        Err(QemuError::NoImage)
    ));
    std::fs::remove_file(&fx.image.rootfs).unwrap();
    let err = backend.start_inner(&fx.spec(), &fx.ctx()).unwrap_err();
    assert!(
        matches!(&err, QemuError::ImageFileMissing { path } if *path == fx.image.rootfs),
        "{err}"
    );
    assert!(!fx.sandbox.vm_dir().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_answers_times_out_and_the_vm_is_removed() {
    let fx = Fixture::new("boot", &multiboot_kernel());
    let backend = fx.backend();
    backend.start(&fx.spec(), &fx.ctx()).await.unwrap();
    let stamp = VmmStamp::read(&fx.sandbox.vm_pid_file()).unwrap().unwrap();
    // The relay in front of QEMU's real virtio-serial chardev: QEMU accepts the connection,
    // the halted payload never answers.
    let listener = vm::relay::bind(&fx.sandbox.guest_socket()).unwrap();
    let upstream = vm::relay::Upstream::Http2Mux {
        socket: fx.sandbox.vm_serial_socket(),
    };
    let relay = tokio::spawn(vm::relay::serve(listener, upstream, std::future::pending()));
    let client = GuestClient::new(fx.sandbox.guest_socket());
    match client.health().await.unwrap_err() {
        crate::guest_client::GuestClientError::Guest {
            status: 502,
            message,
            ..
        } => assert!(message.contains("did not answer"), "{message}"),
        other => panic!("expected the relay's 502, got {other:?}"),
    }
    let err = backend
        .wait_guest_ready(&fx.id, &client, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, QemuError::BootTimeout { .. }), "{err}");
    relay.abort();
    assert!(!stamp.is_alive());
    assert!(!fx.sandbox.vm_dir().exists());
    assert_eq!(fx.qemu_processes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_dies_while_booting_is_reported_and_cleaned_up() {
    let fx = Fixture::new("died", &multiboot_kernel());
    let backend = fx.backend();
    backend.start(&fx.spec(), &fx.ctx()).await.unwrap();
    let stamp = VmmStamp::read(&fx.sandbox.vm_pid_file()).unwrap().unwrap();
    pidfd::kill_and_wait(i32::try_from(stamp.pid).unwrap(), Duration::from_secs(10)).unwrap();
    let client = GuestClient::new(fx.sandbox.guest_socket());
    let err = backend
        .wait_guest_ready(&fx.id, &client, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, QemuError::DiedBooting { .. }), "{err}");
    assert!(!fx.sandbox.vm_dir().exists());
}

#[test]
fn with_a_link_qemu_attaches_to_the_bridged_tap_inside_the_namespace() {
    use crate::net::tap::{BRIDGE_IF, TAP_IF};

    let fx = Fixture::new("net", &multiboot_kernel());
    let host_if = format!("hq{}", std::process::id() % 1_000_000);
    let (host_addr, guest_addr) = (
        std::net::Ipv4Addr::new(10, 199, 78, 1),
        std::net::Ipv4Addr::new(10, 199, 78, 2),
    );
    let mut host = fx.add_link(&host_if, host_addr, guest_addr);

    let mut ctx = fx.ctx();
    ctx.net = Some(vm::GuestNet {
        address: guest_addr,
        prefix: 30,
        gateway: host_addr,
        dns: host_addr,
    });
    let backend = fx.backend();
    backend.start_inner(&fx.spec(), &ctx).unwrap();

    let show = |dev: &str| {
        let out = Command::new("ip")
            .args(["-n", &fx.netns_name, "-j", "link", "show", dev])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
    };
    let tap = show(TAP_IF);
    assert_eq!(tap["master"], BRIDGE_IF);
    // Carrier on a tap means a process holds it open: QEMU attached from inside the namespace.
    assert!(
        tap["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "LOWER_UP"),
        "{tap}"
    );
    let args = std::fs::read(format!(
        "/proc/{}/cmdline",
        VmmStamp::read(&fx.sandbox.vm_pid_file())
            .unwrap()
            .unwrap()
            .pid
    ))
    .unwrap();
    let args = String::from_utf8_lossy(&args);
    assert!(
        args.contains("hearth.net=10.199.78.2/30,10.199.78.1"),
        "{args}"
    );
    assert!(args.contains(&format!(
        "mac={}",
        argv::format_mac(argv::mac_for(fx.id.as_str()))
    )));

    backend.remove_vm(&fx.id).unwrap();
    let _ = host.delete_link(&host_if);
}

#[test]
fn the_relay_upstream_follows_the_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = RuntimeDirs::open(tmp.path()).unwrap();
    let id = SandboxId::parse("up").unwrap();
    let dirs = runtime.sandbox(&id);
    let images: std::sync::Arc<dyn vm::GuestImageSource> = std::sync::Arc::new(vm::NoGuestImages);
    let serial = QemuBackend::new(tcg_config(), runtime.clone(), images.clone());
    assert!(matches!(
        serial.upstream(&id, &dirs),
        vm::relay::Upstream::Http2Mux { socket } if socket == dirs.vm_serial_socket()
    ));
    let vsock = QemuBackend::new(
        QemuConfig {
            vsock: true,
            ..tcg_config()
        },
        runtime,
        images,
    );
    let vm::relay::Upstream::PerConnection(connector) = vsock.upstream(&id, &dirs) else {
        panic!("vsock config must give a per-connection upstream");
    };
    let text = format!("{connector:?}");
    assert!(
        text.contains(&format!("cid: {}", argv::cid_for("up"))),
        "{text}"
    );
    assert!(text.contains("port: 1024"), "{text}");
}

#[test]
fn snapshot_saves_a_running_vm_and_a_new_sandbox_resumes_it() {
    let fx = Fixture::new("snap", &multiboot_kernel());
    let backend = fx.backend();
    backend.start_inner(&fx.spec(), &fx.ctx()).unwrap();
    let dest = fx._tmp.path().join("snap1");
    let manifest = backend.snapshot(&fx.id, &dest).unwrap();
    assert_eq!((manifest.memory_mib, manifest.vcpus), (64, 1));
    assert_eq!(manifest.accel, Accel::Tcg);
    // A QEMU migration stream ("QEVM"), and the VM runs on afterwards.
    let state = std::fs::read(dest.join(snapshot::STATE_FILE)).unwrap();
    assert_eq!(&state[..4], b"QEVM");
    assert_eq!(backend.status(&fx.id).unwrap().status, "running");
    assert!(matches!(
        backend.snapshot(&fx.id, &dest),
        Err(QemuError::SnapshotExists { .. })
    ));
    backend.remove_vm(&fx.id).unwrap();

    // A second sandbox with the same hardware (and the same image) resumes it.
    let mut other = Fixture::new("snap2", &multiboot_kernel());
    other.image = fx.image.clone();
    let backend2 = other.backend();
    backend2
        .start_from_snapshot(&other.spec(), &other.ctx(), &dest)
        .unwrap();
    assert_eq!(backend2.status(&other.id).unwrap().status, "running");
    backend2.remove_vm(&other.id).unwrap();
    assert!(!other.sandbox.vm_dir().exists());

    // Different hardware is refused before anything starts.
    let mut spec = other.spec();
    spec.limits.memory = MemoryBytes(128 << 20);
    let err = backend2
        .start_from_snapshot(&spec, &other.ctx(), &dest)
        .unwrap_err();
    assert!(
        matches!(&err, QemuError::SnapshotMismatch { field, .. } if *field == "memory (MiB)"),
        "{err}"
    );
    assert!(!other.sandbox.vm_dir().exists());
    // So is another guest image: the restored kernel has the snapshot's rootfs mounted.
    let third = Fixture::new("snap3", &multiboot_kernel());
    let err = third
        .backend()
        .start_from_snapshot(&third.spec(), &third.ctx(), &dest)
        .unwrap_err();
    assert!(
        matches!(&err, QemuError::SnapshotMismatch { field, .. } if *field == "guest image rootfs"),
        "{err}"
    );
    assert_eq!(other.qemu_processes(), 0);
}

#[test]
fn a_corrupt_snapshot_is_a_clear_error_and_leaves_nothing() {
    let fx = Fixture::new("corrupt", &multiboot_kernel());
    let backend = fx.backend();
    backend.start_inner(&fx.spec(), &fx.ctx()).unwrap();
    let dest = fx._tmp.path().join("snap");
    backend.snapshot(&fx.id, &dest).unwrap();
    backend.remove_vm(&fx.id).unwrap();
    std::fs::write(dest.join(snapshot::STATE_FILE), b"QEVM but not really").unwrap();
    let err = backend
        .start_from_snapshot(&fx.spec(), &fx.ctx(), &dest)
        .unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(&err, QemuError::Migration { error: Some(why), .. } if why.contains("migration")),
        "{err}"
    );
    assert!(!fx.sandbox.vm_dir().exists());
    assert_eq!(fx.qemu_processes(), 0);
}

#[test]
fn a_snapshot_from_another_qemu_is_refused() {
    let fx = Fixture::new("oldver", &multiboot_kernel());
    let dest = fx._tmp.path().join("snap");
    std::fs::create_dir(&dest).unwrap();
    let backend = fx.backend();
    let plan = backend.plan(&fx.spec(), &fx.ctx()).unwrap();
    let mut manifest = SnapshotManifest::of(backend.config(), &plan);
    manifest.qemu_version = "QEMU emulator version 6.0.0".into();
    std::fs::write(
        dest.join(snapshot::MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let err = backend
        .start_from_snapshot(&fx.spec(), &fx.ctx(), &dest)
        .unwrap_err();
    assert!(
        matches!(&err, QemuError::SnapshotMismatch { field: "QEMU", snapshot, .. } if snapshot.contains("6.0.0")),
        "{err}"
    );
    assert!(!fx.sandbox.vm_dir().exists());
    // The cheap check callers make before creating anything says the same.
    let err = backend.check_snapshot(&dest).unwrap_err();
    assert!(
        matches!(&err, QemuError::SnapshotMismatch { field: "QEMU", .. }),
        "{err}"
    );
    manifest.qemu_version = backend.config().version.clone();
    manifest.memory_mib = 4096;
    std::fs::write(
        dest.join(snapshot::MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    // The size of the VM is the new sandbox's business, not the host's.
    assert_eq!(backend.check_snapshot(&dest).unwrap().memory_mib, 4096);
}

/// The whole path with the real guest image: QEMU TCG boots it, the relay carries
/// `GuestClient` to hearth-guest over virtio-serial HTTP/2. Needs a built image:
/// `HEARTH_TEST_VM_IMAGE=<dir with vmlinuz, initramfs.cpio.gz, rootfs.ext4> cargo test -p
/// hearth-sandbox --lib boots_the_guest_image -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a guest image (HEARTH_TEST_VM_IMAGE)"]
async fn boots_the_guest_image_and_serves_through_the_relay() {
    let dir =
        PathBuf::from(std::env::var_os("HEARTH_TEST_VM_IMAGE").expect("HEARTH_TEST_VM_IMAGE"));
    let mut fx = Fixture::new("e2e", b"");
    fx.image = vm::VmImagePaths {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio.gz"),
        rootfs: dir.join("rootfs.ext4"),
    };
    let mut spec = fx.spec();
    spec.limits.memory = MemoryBytes(512 << 20);
    spec.seccomp = None;
    let backend = fx.backend();
    let started = Instant::now();
    let (host_addr, guest_addr) = (
        std::net::Ipv4Addr::new(10, 199, 79, 1),
        std::net::Ipv4Addr::new(10, 199, 79, 2),
    );
    let host_if = format!("he{}", std::process::id() % 1_000_000);
    let _host = fx.add_link(&host_if, host_addr, guest_addr);
    let mut ctx = fx.ctx();
    ctx.net = Some(vm::GuestNet {
        address: guest_addr,
        prefix: 30,
        gateway: host_addr,
        dns: host_addr,
    });
    let tcp = std::net::TcpListener::bind((host_addr, 0)).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut plan = backend.plan(&spec, &ctx).unwrap();
    // For images without the 9p modules: boot without the workspace share.
    if std::env::var_os("HEARTH_TEST_VM_SKIP_9P").is_some() {
        plan.workspace = None;
        plan.cmdline.workspace_9p = false;
    }
    backend.start_planned(&spec, &ctx, &plan, None).unwrap();
    let listener = vm::relay::bind(&fx.sandbox.guest_socket()).unwrap();
    let relay = tokio::spawn(vm::relay::serve(
        listener,
        backend.upstream(&fx.id, &fx.sandbox),
        std::future::pending(),
    ));
    let client = GuestClient::new(fx.sandbox.guest_socket());
    let health = backend
        .wait_guest_ready(&fx.id, &client, Duration::from_secs(120))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!("guest ready in {:?}: {health:?}", started.elapsed());

    let req: hearth_proto::ExecRequest =
        serde_json::from_value(serde_json::json!({"argv": ["sh", "-c", "echo hi; uname -r"]}))
            .unwrap();
    let mut out = Vec::new();
    let status = client
        .exec(&req, |chunk| {
            if let crate::guest_client::OutputChunk::Stdout(data) = chunk {
                out.extend(data);
            }
        })
        .await
        .unwrap();
    eprintln!("exec: {status:?} {}", String::from_utf8_lossy(&out));
    assert_eq!(status.code, Some(0));
    assert!(out.starts_with(b"hi\n"));

    // The guest's NIC, through tap0 and br0 in the namespace, reaches a host listener.
    let connect = format!(
        "import socket; s = socket.create_connection(('{host_addr}', {port}), 10); s.sendall(b'from-guest')"
    );
    let req: hearth_proto::ExecRequest =
        serde_json::from_value(serde_json::json!({"argv": ["python3", "-c", connect]})).unwrap();
    let accept = std::thread::spawn(move || {
        let (mut stream, peer) = tcp.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut got).unwrap();
        (peer, got)
    });
    let mut err = Vec::new();
    let status = client
        .exec(&req, |chunk| {
            if let crate::guest_client::OutputChunk::Stderr(data) = chunk {
                err.extend(data);
            }
        })
        .await
        .unwrap();
    assert_eq!(status.code, Some(0), "{}", String::from_utf8_lossy(&err));
    let (peer, got) = accept.join().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(guest_addr));
    assert_eq!(got, b"from-guest");

    client
        .write_file("/tmp/x", &b"payload"[..], 0o600)
        .await
        .unwrap();
    assert_eq!(client.read_file("/tmp/x").await.unwrap(), b"payload");

    backend.pause(&fx.id).unwrap();
    backend.resume(&fx.id).unwrap();
    assert_eq!(client.health().await.unwrap().status, "ok");

    relay.abort();
    backend.remove_vm(&fx.id).unwrap();
    assert_eq!(fx.qemu_processes(), 0);
}
