//! Firecracker snapshots in the backend, against the stand-in VMM (`fc_backend`): a snapshot
//! restored into another sandbox, one saved out of the VM's dir with its manifest, and loads
//! that fail leaving nothing.

mod fc_backend;

use fc_backend::*;

/// The fake VMM's entry point (see `fc_backend`).
#[test]
fn fake_firecracker_vmm() {
    fc_backend::serve_if_asked();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_snapshot_restores_into_another_sandbox_and_its_manifest_is_checked() {
    let fx = Fixture::new("fc-save");
    let backend = fx.backend(&[], LONG);
    let id = fx.spec.id.clone();
    backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap();
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
    backend.remove(&id).await.unwrap();

    // Another sandbox resumes it: logger, metrics, then the load of the saved files.
    assert_eq!(backend.check_snapshot(&dest).unwrap(), manifest);
    let other = SandboxId::parse("fc-restored").unwrap();
    let dirs = fx.runtime.create_sandbox(&other, None).unwrap();
    let spec = SandboxSpec {
        id: other.clone(),
        ..fx.spec.clone()
    };
    let ctx = LaunchContext {
        dirs: dirs.clone(),
        ..fx.ctx()
    };
    backend
        .restore_vm(&spec, &ctx, &saved_files(&dest))
        .await
        .unwrap();
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
    backend.remove(&other).await.unwrap();

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

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restores_into_another_sandbox_and_a_bad_one_leaves_nothing() {
    let fx = Fixture::new("fc-source");
    let backend = fx.backend(&[], LONG);
    let source = fx.spec.id.clone();
    backend.start_vm(&fx.spec, &fx.ctx()).await.unwrap();
    let snapshot = backend.snapshot(&source).await.unwrap();

    let clone_id = SandboxId::parse("fc-clone").unwrap();
    let clone_dirs = fx.runtime.create_sandbox(&clone_id, None).unwrap();
    let clone_spec = SandboxSpec {
        id: clone_id.clone(),
        ..fx.spec.clone()
    };
    let ctx = LaunchContext {
        dirs: clone_dirs.clone(),
        ..fx.ctx()
    };
    backend
        .restore_vm(&clone_spec, &ctx, &snapshot)
        .await
        .unwrap();
    // The clone's guest answers on the clone's own vsock socket.
    let mut guest = backend.guest_connector(&clone_id).connect().await.unwrap();
    guest.write_all(b"clone").await.unwrap();
    let mut echoed = [0u8; 5];
    guest.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"clone");
    assert_eq!(backend.list().await.unwrap(), ["fc-clone", "fc-source"]);
    backend.remove(&clone_id).await.unwrap();

    // Firecracker refusing the snapshot (another version, say): a clear error, nothing left.
    let refusing = fx.backend(&[(FAIL_AT, "/snapshot/load")], LONG);
    let err = refusing
        .restore_vm(&clone_spec, &ctx, &snapshot)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PUT /snapshot/load"), "{err}");
    assert!(!clone_dirs.vm_dir().exists());
    assert_eq!(refusing.list().await.unwrap(), ["fc-source"]);
    backend.remove(&source).await.unwrap();
}
