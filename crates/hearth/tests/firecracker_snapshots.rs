//! Firecracker snapshots through the CLI, against the stand-in VMM (`fc_fake`): save (running
//! and paused), restore as a new sandbox after the source is gone, jailed and direct, and every
//! refusal and failure leaving nothing behind.

mod common;
mod fc_fake;

use std::path::Path;

use common::{env, leftovers, ok, stderr, stdout};
use fc_fake::*;

/// The fake VMM's entry point (see `fc_fake`).
#[test]
fn fake_firecracker_vmm() {
    fc_fake::serve_if_asked();
}

#[test]
fn a_snapshot_restores_as_a_new_sandbox_after_its_source_is_gone() {
    use std::os::unix::fs::PermissionsExt;
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let thaws = tmp.path().join("thaws.jsonl");
    let (records, fc) = recording_fake(tmp.path(), &[(THAW_LOG, thaws.to_str().unwrap())]);
    let (src, dst) = ("fc-snap-src", "fc-snap-dst");
    fc_ok(
        &fc,
        &["sandbox", "create", "--id", src, "--backend", "firecracker"],
    );
    let _cleanup_src = common::Sandbox { id: src.to_owned() };
    let _cleanup_snapshots = Snapshots(vec!["fc-snap-1", "fc-snap-2"]);

    // A running VM: paused for the snapshot, resumed after; the files were written where the
    // VMM sees its own dir (the mount view), and moved out of the VM's dir.
    let out = fc_ok(
        &fc,
        &["sandbox", "snapshot", src, "--name", "fc-snap-1", "--json"],
    );
    let record = json_of(&out);
    assert_eq!(record["backend"], "firecracker", "{record}");
    assert_eq!(record["vmm_version"], "1.17.0-dev", "{record}");
    let calls: Vec<String> = requests(&records, src)
        .into_iter()
        .filter(|(call, _)| call.contains("/vm") || call.contains("/snapshot"))
        .map(|(call, body)| format!("{call} {}", body["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        calls,
        [
            "PATCH /vm Paused",
            "PUT /snapshot/create ",
            "PATCH /vm Resumed"
        ]
    );
    let view = env().runtime_dir.join("vmm-view");
    let create = requests(&records, src)
        .into_iter()
        .find(|(call, _)| call == "PUT /snapshot/create")
        .unwrap()
        .1;
    assert_eq!(
        create["snapshot_path"],
        view.join("snapshot.state").to_str().unwrap()
    );
    let vm_dir = env().runtime_dir.join("sandboxes").join(src).join("vm");
    assert!(!vm_dir.join("snapshot.state").exists() && !vm_dir.join("snapshot.mem").exists());
    let dir = env().state_dir.join("snapshots/fc-snap-1");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for name in ["vm.state", "vm.mem", "manifest.json"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let out = fc_cmd(&fc, &["sandbox", "exec", src, "--cwd", "/", "--", "true"]);
    assert!(out.status.success(), "the source runs on: {}", stderr(&out));

    // A paused VM is snapshotted as it is and stays paused.
    ok(&[
        "--firecracker-bin",
        fc.to_str().unwrap(),
        "sandbox",
        "pause",
        src,
    ]);
    ok(&[
        "--firecracker-bin",
        fc.to_str().unwrap(),
        "sandbox",
        "snapshot",
        src,
        "--name",
        "fc-snap-2",
    ]);
    let last_vm = requests(&records, src)
        .into_iter()
        .rfind(|(call, _)| call == "PATCH /vm")
        .unwrap()
        .1;
    assert_eq!(last_vm["state"], "Paused");

    // The source goes; its snapshot restores as a new sandbox. The VMM reopens the drives at
    // the saved paths (the view's), where the new VM has its own config drive.
    fc_ok(&fc, &["sandbox", "rm", src]);
    fc_ok(
        &fc,
        &[
            "sandbox",
            "create",
            "--id",
            dst,
            "--from-snapshot",
            "fc-snap-1",
        ],
    );
    let _cleanup_dst = common::Sandbox { id: dst.to_owned() };
    let calls: Vec<String> = requests(&records, dst)
        .into_iter()
        .map(|(call, _)| call)
        .filter(|call| call != "GET /")
        .collect();
    assert_eq!(calls, ["PUT /logger", "PUT /metrics", "PUT /snapshot/load"]);
    let load = requests(&records, dst).pop().unwrap().1;
    assert_eq!(load["resume_vm"], true);
    assert_eq!(
        load["vsock_override"]["uds_path"],
        view.join("vsock.sock").to_str().unwrap()
    );
    // The restored guest was told its new identity: the new id and the new sandbox's address.
    let thaw: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&thaws).unwrap().trim()).unwrap();
    assert_eq!(thaw["hostname"], dst, "{thaw}");
    let net = json_of(&fc_cmd(&fc, &["sandbox", "net", dst, "--json"]));
    let address = net["link"]["sandbox_address"].as_str().unwrap();
    assert_eq!(
        address.split('/').next(),
        thaw["net"]["address"].as_str(),
        "{net} {thaw}"
    );
    let out = fc_ok(
        &fc,
        &[
            "sandbox", "exec", dst, "--cwd", "/", "--", "echo", "restored",
        ],
    );
    assert_eq!(stdout(&out), "restored\n");

    // What can't be restored is refused before anything is made.
    let refused = |extra: &[&str], code: i32, needle: &str| {
        let mut args = vec!["sandbox", "create", "--id", "fc-snap-x"];
        args.extend(extra);
        let out = fc_cmd(&fc, &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            leftovers("fc-snap-x").is_empty(),
            "{:?}",
            leftovers("fc-snap-x")
        );
    };
    refused(
        &["--from-snapshot", "fc-snap-1", "--backend", "qemu"],
        3,
        "firecracker sandbox",
    );
    refused(
        &["--from-snapshot", "fc-snap-1", "--net", "none"],
        3,
        "with a network",
    );
    refused(&["--from-snapshot", "no-such-snap"], 4, "no-such-snap");
    // A VMM that can't load it: the sandbox's VM, tap, netns and dirs are all removed again.
    let failing_dir = tmp.path().join("failing");
    std::fs::create_dir(&failing_dir).unwrap();
    let failing = fake_firecracker(&failing_dir, &[(FAIL_AT, "/snapshot/load")]);
    let out = fc_cmd(
        &failing,
        &[
            "sandbox",
            "create",
            "--id",
            "fc-snap-x",
            "--from-snapshot",
            "fc-snap-1",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Refused by the fake"),
        "{}",
        stderr(&out)
    );
    assert!(
        leftovers("fc-snap-x").is_empty(),
        "{:?}",
        leftovers("fc-snap-x")
    );
    assert!(
        fake_vmms("fc-snap-x").is_empty(),
        "{:?}",
        fake_vmms("fc-snap-x")
    );
    // A snapshot from another Firecracker (its format is version-bound).
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("1.17.0-dev", "1.16.0")).unwrap();
    refused(&["--from-snapshot", "fc-snap-1"], 3, "Firecracker 1.16.0");
    std::fs::write(&manifest, text).unwrap();

    fc_ok(&fc, &["sandbox", "rm", dst]);
    assert!(leftovers(dst).is_empty(), "{:?}", leftovers(dst));
    assert!(fake_vmms(dst).is_empty(), "{:?}", fake_vmms(dst));
    ok(&["sandbox", "snapshot-rm", "fc-snap-1", "fc-snap-2"]);
    assert!(!dir.exists());
}

#[test]
fn a_jailed_snapshot_restores_in_a_jail_and_not_without_one() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let thaws = tmp.path().join("thaws.jsonl");
    let fc = fake_firecracker(tmp.path(), &[(THAW_LOG, thaws.to_str().unwrap())]);
    let jailer = fake_jailer(tmp.path(), JailerTrace::default());
    let with = |args: &[&str]| jailed_cmd(&fc, &jailer, args);
    let (src, dst) = ("fcj-snap-src", "fcj-snap-dst");
    ok_output(with(&[
        "sandbox",
        "create",
        "--id",
        src,
        "--backend",
        "firecracker",
    ]));
    let _cleanup_src = common::Sandbox { id: src.to_owned() };
    let _cleanup_snapshots = Snapshots(vec!["fcj-snap", "fcj-snap-again"]);
    ok_output(with(&["sandbox", "snapshot", src, "--name", "fcj-snap"]));
    let jail = |id: &str| env().runtime_dir.join("jail/firecracker").join(id);
    assert!(!jail(src).join("root/snapshot.mem").exists());
    ok_output(with(&["sandbox", "rm", src]));

    // The saved drives are `/config.img` and `/rootfs.ext4`: a direct VMM has no such files.
    let out = fc_cmd(
        &fc,
        &[
            "sandbox",
            "create",
            "--id",
            dst,
            "--from-snapshot",
            "fcj-snap",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("launch mode"), "{}", stderr(&out));
    assert!(leftovers(dst).is_empty(), "{:?}", leftovers(dst));

    ok_output(with(&[
        "sandbox",
        "create",
        "--id",
        dst,
        "--from-snapshot",
        "fcj-snap",
    ]));
    let _cleanup_dst = common::Sandbox { id: dst.to_owned() };
    // The snapshot was placed in the new jail next to its own rootfs and config drive.
    for name in ["restore.state", "restore.mem", "rootfs.ext4", "config.img"] {
        assert!(jail(dst).join("root").join(name).exists(), "{name}");
    }
    // The restored VM's memory stays mapped from restore.mem: a snapshot of it writes
    // elsewhere, and leaves that file alone.
    ok_output(with(&[
        "sandbox",
        "snapshot",
        dst,
        "--name",
        "fcj-snap-again",
    ]));
    assert!(jail(dst).join("root/restore.mem").exists());
    ok(&["sandbox", "snapshot-rm", "fcj-snap-again"]);
    assert!(std::fs::read_to_string(&thaws).unwrap().contains(dst));
    let out = ok_output(with(&[
        "sandbox", "exec", dst, "--cwd", "/", "--", "echo", "jailed",
    ]));
    assert_eq!(stdout(&out), "jailed\n");
    ok_output(with(&["sandbox", "rm", dst]));
    assert!(!jail(dst).exists(), "the jail is removed");
    assert!(leftovers(dst).is_empty(), "{:?}", leftovers(dst));
    assert!(fake_vmms(dst).is_empty(), "{:?}", fake_vmms(dst));
}

#[test]
fn a_failed_snapshot_leaves_no_files_and_the_vm_running() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let (records, fc) = recording_fake(tmp.path(), &[(FAIL_AT, "/snapshot/create")]);
    let id = "fc-snap-fail";
    fc_ok(
        &fc,
        &["sandbox", "create", "--id", id, "--backend", "firecracker"],
    );
    let _cleanup = common::Sandbox { id: id.to_owned() };
    let _cleanup_snapshots = Snapshots(vec!["fc-snap-refused"]);
    let out = fc_cmd(
        &fc,
        &["sandbox", "snapshot", id, "--name", "fc-snap-refused"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("Refused by the fake"), "{err}");
    assert!(!env().state_dir.join("snapshots/fc-snap-refused").exists());
    let vm = env().runtime_dir.join("sandboxes").join(id).join("vm");
    assert!(!vm.join("snapshot.state").exists() && !vm.join("snapshot.mem").exists());
    let list = fc_cmd(&fc, &["sandbox", "snapshots", "--json"]);
    assert!(
        !stdout(&list).contains("fc-snap-refused"),
        "{}",
        stdout(&list)
    );
    // Paused for the attempt, resumed after it: the sandbox runs on.
    let last_vm = requests(&records, id)
        .into_iter()
        .rfind(|(call, _)| call == "PATCH /vm")
        .unwrap()
        .1;
    assert_eq!(last_vm["state"], "Resumed");
    fc_ok(&fc, &["sandbox", "exec", id, "--cwd", "/", "--", "true"]);
    fc_ok(&fc, &["sandbox", "rm", id]);
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
}
