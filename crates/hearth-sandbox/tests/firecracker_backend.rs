//! The Firecracker backend's lifecycle against a stand-in VMM process (`fc_backend`): start,
//! pause, resume, remove, the jailer, and every way a start can fail leaving nothing.

mod fc_backend;

use fc_backend::*;

/// The fake VMM's entry point (see `fc_backend`).
#[test]
fn fake_firecracker_vmm() {
    fc_backend::serve_if_asked();
}

#[tokio::test(flavor = "multi_thread")]
async fn start_configures_the_vm_in_order_and_remove_leaves_nothing() {
    let fx = Fixture::new("fc-life");
    let backend = fx.backend(&[], LONG);
    let id = fx.spec.id.clone();
    let endpoint = backend.start_vm(&fx.spec, &fx.ctx_net()).await.unwrap();
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

    assert!(backend.is_running(&id).await.unwrap());
    assert_eq!(backend.list().await.unwrap(), ["fc-life"]);

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
    other.remove(&id).await.unwrap();
    assert!(!stamp.is_alive());
    assert!(!vm.exists());
    assert!(!backend.is_running(&id).await.unwrap());
    assert!(other.list().await.unwrap().is_empty());
    backend.remove(&id).await.unwrap(); // idempotent; reaps its child
    let err = backend.pause(&id).await.unwrap_err();
    assert!(matches!(err, FirecrackerError::NotRunning { .. }), "{err}");
}

/// After a failed start: no VMM process, no vm/ dir, nothing listed.
async fn assert_nothing_left(fx: &Fixture, backend: &FirecrackerBackend) {
    let header = fx.header();
    let gone = !Path::new(&format!("/proc/{}", header.pid)).exists();
    assert!(gone, "VMM {} still exists", header.pid);
    assert!(!fx.dirs.vm_dir().exists());
    assert!(fx.dirs.base().exists(), "the sandbox dir is the caller's");
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_dying_during_configuration_fails_start_and_is_cleaned_up() {
    let fx = Fixture::new("fc-dies");
    let backend = fx.backend(&[(DIE_AT, "/boot-source")], LONG);
    let err = backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap_err();
    match &err {
        FirecrackerError::VmmExited { status, log, .. } => {
            assert!(status.contains("exit status: 1"), "{status}");
            assert_eq!(log, &fx.dirs.vm_log());
        }
        other => panic!("{other}"),
    }
    assert_nothing_left(&fx, &backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_call_fails_start_kills_the_vmm_and_cleans_up() {
    let fx = Fixture::new("fc-refused");
    let backend = fx.backend(&[(FAIL_AT, "/network-interfaces/eth0")], LONG);
    let err = backend.start_vm(&fx.spec, &fx.ctx_net()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("PUT /network-interfaces/eth0") && text.contains("Refused by the fake"),
        "{text}"
    );
    assert_nothing_left(&fx, &backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_that_never_serves_its_socket_times_out_and_is_cleaned_up() {
    let fx = Fixture::new("fc-silent");
    // A VMM that records who it is, then never opens its API socket.
    let header = r#"{"args":[],"netns":"","pid":'$$',"sid":0}"#;
    let backend = fx.backend_running(
        &format!("echo '{header}' >> \"${RECORD}\"\nexec sleep 600\n"),
        Duration::from_millis(300),
    );
    let err = backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap_err();
    assert!(
        matches!(err, FirecrackerError::StartTimeout { .. }),
        "{err}"
    );
    assert_nothing_left(&fx, &backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_seccomp_fault_is_exposed_with_exit_status_148() {
    let fx = Fixture::new("fc-fault");
    let backend = fx.backend(&[(FAULT_AT, "/vm")], LONG);
    let id = fx.spec.id.clone();
    backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap();
    assert!(backend.vmm_exit(&id).is_none(), "still running");
    // The VMM "hits a filtered syscall" while pausing.
    assert!(backend.pause(&id).await.is_err());
    let exit = tokio::task::block_in_place(|| backend.wait_vmm_exit(&id)).unwrap();
    assert_eq!(exit.exit_status(), 148);
    assert_eq!(exit.fault(), VmmFault::Syscall(41));
    assert!(!backend.is_running(&id).await.unwrap());
    // A process that did not spawn the VMM has no status, but the log still names the call.
    let other = fx.backend(&[], LONG);
    assert!(other.vmm_exit(&id).is_none());
    assert_eq!(
        VmmFault::from_exit(-1, &other.vmm_log_tail(&id)),
        VmmFault::Syscall(41)
    );
    backend.remove(&id).await.unwrap();
    assert!(!fx.dirs.vm_dir().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_start_of_the_same_sandbox_is_refused_without_touching_the_first() {
    let fx = Fixture::new("fc-twice");
    let backend = fx.backend(&[], LONG);
    backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap();
    let err = backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap_err();
    assert!(matches!(err, FirecrackerError::Dirs(_)), "{err}");
    assert!(backend.is_running(&fx.spec.id).await.unwrap());
    backend.remove(&fx.spec.id).await.unwrap();
    assert!(!backend.is_running(&fx.spec.id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn jailed_start_puts_everything_in_the_jail_for_the_vmm_and_remove_clears_it() {
    use std::os::unix::fs::MetadataExt;
    const UID: u32 = 64_321;
    let fx = Fixture::new("fc-jail");
    let backend = fx.jailed_backend(UID);
    let id = fx.spec.id.clone();
    backend.start_vm(&fx.spec, &fx.ctx_net()).await.unwrap();

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
    assert_eq!(backend.list().await.unwrap(), ["fc-jail"]);
    backend.remove(&id).await.unwrap();
    assert!(!jail.exists() && !cgroup.exists() && !fx.dirs.vm_dir().exists());
    assert!(kernel.exists(), "the cached image survives its jail");
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jail_whose_sockets_would_not_fit_sun_path_is_refused_before_anything_is_made() {
    // An id long enough that the jail's sockets (`<tmp>/root/jail/firecracker/<id>/root/
    // vsock.sock`) overflow 107 bytes while the sandbox dir's (`<tmp>/root/sandboxes/<id>/
    // guest/guest.sock`, 6 bytes shorter) still fit: 104 and 110 bytes. `<tmp>` is TMPDIR's
    // `.tmpXXXXXX`.
    let tmp_len = std::env::temp_dir().as_os_str().len() + "/.tmpXXXXXX".len();
    let fx = Fixture::new(&"j".repeat(71usize.saturating_sub(tmp_len).clamp(1, 64)));
    let backend = fx.jailed_backend(64_322);
    let err = backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap_err();
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
