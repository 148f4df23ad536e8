//! Firecracker's API as hearth speaks it: every request body against Firecracker's own spec,
//! and the whole boot sequence against a local server that speaks that API.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use hearth_sandbox::backend::firecracker::api::{
    ActionType, ApiCall, ApiRequest, InstanceAction, MemoryBackend, MemoryBackendType,
    SnapshotCreate, SnapshotLoad, SnapshotType, Vm, VmState, VsockOverride,
};
use hearth_sandbox::backend::firecracker::boot::{restore_calls, BootPlan};
use hearth_sandbox::backend::firecracker::layout::VmLayout;
use hearth_sandbox::backend::firecracker::{ApiClient, ApiError, VsockConnector};
use hearth_sandbox::backend::vm::{GuestNet, VmImagePaths};
use hearth_sandbox::spec::{Cpus, MemoryBytes, ResourceLimits};
use hearth_test_support::firecracker::fake_api::{Behaviour, FakeApi};
use hearth_test_support::firecracker::spec::Spec;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn net() -> GuestNet {
    GuestNet {
        address: Ipv4Addr::new(10, 201, 0, 2),
        prefix: 30,
        gateway: Ipv4Addr::new(10, 201, 0, 1),
        dns: Ipv4Addr::new(10, 201, 0, 1),
    }
}

fn image() -> VmImagePaths {
    VmImagePaths {
        kernel: "/images/abc/vmlinux".into(),
        initrd: "/images/abc/initramfs.cpio.gz".into(),
        rootfs: "/images/abc/rootfs.ext4".into(),
    }
}

/// Image files that exist (Firecracker opens them when they are configured).
fn image_in(dir: &Path) -> VmImagePaths {
    let image = VmImagePaths {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initramfs.cpio.gz"),
        rootfs: dir.join("rootfs.ext4"),
    };
    for file in [&image.kernel, &image.initrd, &image.rootfs] {
        std::fs::write(file, b"image").unwrap();
    }
    image
}

/// Every call hearth can send: boot plans in both layouts, with and without network and
/// initrd, the start action, pause/resume, snapshot create and load.
fn every_call(vm_dir: &Path) -> Vec<ApiCall> {
    let limits = ResourceLimits {
        memory: MemoryBytes(1 << 30),
        cpus: Cpus(2.5),
        pids: 256,
        ..ResourceLimits::default()
    };
    let mut calls = Vec::new();
    for layout in [VmLayout::direct(vm_dir), VmLayout::jailed(vm_dir)] {
        for with_net in [true, false] {
            let n = net();
            let plan = BootPlan::new(&layout, &image(), &limits, with_net.then_some(&n));
            calls.extend(plan.calls().unwrap());
        }
        let state = layout.vmm("snapshot.state");
        let memory = layout.vmm("snapshot.mem");
        calls.extend(restore_calls(&layout, &state, &memory).unwrap());
    }
    let start = InstanceAction {
        action_type: ActionType::InstanceStart,
    };
    calls.push(start.call().unwrap());
    for state in [VmState::Paused, VmState::Resumed] {
        calls.push(Vm { state }.call().unwrap());
    }
    calls.push(
        SnapshotCreate {
            snapshot_path: vm_dir.join("snapshot.state"),
            mem_file_path: vm_dir.join("snapshot.mem"),
            snapshot_type: SnapshotType::Full,
        }
        .call()
        .unwrap(),
    );
    for vsock_override in [None, Some(vm_dir.join("vsock.sock"))] {
        calls.push(
            SnapshotLoad {
                snapshot_path: vm_dir.join("snapshot.state"),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: vm_dir.join("snapshot.mem"),
                },
                resume_vm: true,
                vsock_override: vsock_override.map(|uds_path| VsockOverride { uds_path }),
            }
            .call()
            .unwrap(),
        );
    }
    calls
}

#[test]
fn every_request_body_hearth_sends_matches_firecrackers_spec() {
    let spec = Spec::load();
    let calls = every_call(Path::new("/run/hearth/sandboxes/sb-1/vm"));
    let mut seen = std::collections::BTreeSet::new();
    for call in &calls {
        spec.check(call.method.as_str(), &call.path, Some(&call.body))
            .unwrap_or_else(|e| panic!("{e}\nbody: {}", call.body));
        seen.insert(
            spec.body_definition(call.method.as_str(), &call.path)
                .unwrap(),
        );
    }
    // Each endpoint the issue lists is covered, by the definition Firecracker parses it as.
    let expected = [
        "BootSource",
        "Drive",
        "InstanceActionInfo",
        "Logger",
        "MachineConfiguration",
        "Metrics",
        "NetworkInterface",
        "SnapshotCreateParams",
        "SnapshotLoadParams",
        "Vm",
        "Vsock",
    ];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn the_spec_checker_refuses_what_firecracker_would() {
    let spec = Spec::load();
    let drive = json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": false, "is_read_only": true});
    assert!(spec.check("PUT", "/drives/rootfs", Some(&drive)).is_ok());
    let cases = [
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "is_root_device": false, "readonly": true}),
        ),
        ("PUT", "/drives/rootfs", json!({"drive_id": "rootfs"})),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "is_root_device": "no"}),
        ),
        ("PATCH", "/vm", json!({"state": "Stopped"})),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 33, "mem_size_mib": 128}),
        ),
        ("PUT", "/vsock", json!({"guest_cid": 2, "uds_path": "/v"})),
        ("PUT", "/snapshot/create", json!({"snapshot_path": "/s"})),
        ("PUT", "/vm", json!({"state": "Paused"})),
        ("PUT", "/no-such-endpoint", json!({})),
    ];
    for (method, path, body) in cases {
        let err = spec.check(method, path, Some(&body));
        assert!(err.is_err(), "{method} {path} {body} passed");
    }
}

async fn fake(behaviour: Behaviour) -> (tempfile::TempDir, FakeApi, ApiClient) {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("api.sock");
    let api = FakeApi::new(behaviour);
    api.serve(&socket);
    (tmp, api, ApiClient::new(socket))
}

#[tokio::test]
async fn full_boot_pause_resume_snapshot_sequence_is_accepted_in_order() {
    let (tmp, api, client) = fake(Behaviour::default()).await;
    let vm = VmLayout::direct(tmp.path());
    for file in ["firecracker.log", "metrics.json", "config.img"] {
        std::fs::write(tmp.path().join(file), b"").unwrap();
    }
    let n = net();
    let plan = BootPlan::new(
        &vm,
        &image_in(tmp.path()),
        &ResourceLimits::default(),
        Some(&n),
    );

    let info = client
        .wait_ready(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(info.state, "Not started");
    for call in plan.calls().unwrap() {
        client.call(&call).await.unwrap();
    }
    client
        .send(&InstanceAction {
            action_type: ActionType::InstanceStart,
        })
        .await
        .unwrap();
    assert_eq!(client.instance_info().await.unwrap().state, "Running");

    // The guest is reachable through the vsock socket the plan configured.
    let mut guest = VsockConnector::new(tmp.path().join("vsock.sock"), 1024)
        .connect()
        .await
        .unwrap();
    guest.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    guest.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    client
        .send(&Vm {
            state: VmState::Paused,
        })
        .await
        .unwrap();
    assert_eq!(client.instance_info().await.unwrap().state, "Paused");
    let snapshot = SnapshotCreate {
        snapshot_path: tmp.path().join("snapshot.state"),
        mem_file_path: tmp.path().join("snapshot.mem"),
        snapshot_type: SnapshotType::Full,
    };
    client.send(&snapshot).await.unwrap();
    client
        .send(&Vm {
            state: VmState::Resumed,
        })
        .await
        .unwrap();
    assert!(snapshot.snapshot_path.exists() && snapshot.mem_file_path.exists());

    assert!(api.spec_errors().is_empty(), "{:?}", api.spec_errors());
    let sequence: Vec<String> = api
        .recorded()
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
            "PATCH /vm",
            "PUT /snapshot/create",
            "PATCH /vm",
        ]
    );
}

#[tokio::test]
async fn a_fault_message_becomes_a_typed_error_with_path_and_status() {
    let behaviour = Behaviour {
        fail: HashMap::from([(
            "/drives/rootfs".to_owned(),
            "Unable to open the block device backing file: No such file".to_owned(),
        )]),
        ..Behaviour::default()
    };
    let (tmp, _api, client) = fake(behaviour).await;
    let plan = BootPlan::new(
        &VmLayout::direct(tmp.path()),
        &image(),
        &ResourceLimits::default(),
        None,
    );
    let err = client.send(&plan.drives[0]).await.unwrap_err();
    match &err {
        ApiError::Fault {
            method,
            path,
            status,
            fault_message,
        } => {
            assert_eq!(method, "PUT");
            assert_eq!(path, "/drives/rootfs");
            assert_eq!(*status, 400);
            assert!(fault_message.contains("No such file"), "{fault_message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("PUT /drives/rootfs"), "{err}");
}

#[tokio::test]
async fn out_of_order_calls_are_refused_like_firecracker_does() {
    let (tmp, api, client) = fake(Behaviour::default()).await;
    let pause = Vm {
        state: VmState::Paused,
    };
    // Before InstanceStart: no pausing, and no start without a kernel.
    let err = client.send(&pause).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    let start = InstanceAction {
        action_type: ActionType::InstanceStart,
    };
    let err = client.send(&start).await.unwrap_err();
    assert!(err.to_string().contains("kernel"), "{err}");
    // The files must exist: Firecracker opens them and never creates them.
    let plan = BootPlan::new(
        &VmLayout::direct(tmp.path()),
        &image(),
        &ResourceLimits::default(),
        None,
    );
    let err = client.send(&plan.logger).await.unwrap_err();
    assert!(err.to_string().contains("firecracker.log"), "{err}");
    let err = client.send(&plan.boot_source).await.unwrap_err();
    assert!(err.to_string().contains("vmlinux"), "{err}");
    let plan = BootPlan::new(
        &VmLayout::direct(tmp.path()),
        &image_in(tmp.path()),
        &ResourceLimits::default(),
        None,
    );

    client.send(&plan.boot_source).await.unwrap();
    client.send(&start).await.unwrap();
    // After it: no pre-boot configuration, no snapshot of a running VM.
    let err = client.send(&plan.machine).await.unwrap_err();
    assert!(err.to_string().contains("after starting"), "{err}");
    let snapshot = SnapshotCreate {
        snapshot_path: tmp.path().join("s"),
        mem_file_path: tmp.path().join("m"),
        snapshot_type: SnapshotType::Full,
    };
    let err = client.send(&snapshot).await.unwrap_err();
    assert!(err.to_string().contains("paused"), "{err}");
    assert!(api.spec_errors().is_empty(), "{:?}", api.spec_errors());
}

#[tokio::test]
async fn snapshot_load_restores_on_a_fresh_vmm_only() {
    let (tmp, _api, client) = fake(Behaviour::default()).await;
    // As in Firecracker's state file, the drives are named as the VMM saw them.
    let rootfs = tmp.path().join("rootfs.ext4");
    let state = serde_json::json!({ "drives": [rootfs] }).to_string();
    std::fs::write(tmp.path().join("snapshot.state"), state).unwrap();
    std::fs::write(tmp.path().join("snapshot.mem"), "memory").unwrap();
    std::fs::write(&rootfs, "rootfs").unwrap();
    let load = SnapshotLoad {
        snapshot_path: tmp.path().join("snapshot.state"),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: tmp.path().join("snapshot.mem"),
        },
        resume_vm: true,
        vsock_override: Some(VsockOverride {
            uds_path: tmp.path().join("vsock.sock"),
        }),
    };
    client.send(&load).await.unwrap();
    assert_eq!(client.instance_info().await.unwrap().state, "Running");
    let err = client.send(&load).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");

    // A drive that is gone fails the load, naming it.
    let (_tmp2, _api2, client2) = fake(Behaviour::default()).await;
    std::fs::remove_file(&rootfs).unwrap();
    let err = client2.send(&load).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("rootfs.ext4"), "{err}");
}
