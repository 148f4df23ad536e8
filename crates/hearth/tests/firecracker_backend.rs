//! `hearth sandbox create --backend firecracker` end to end, against a stand-in VMM.
//!
//! Firecracker can't run here (no usable KVM), so `--firecracker-bin` points at a script that
//! execs this test binary as a fake VMM (`fake_firecracker_vmm`, a no-op in a normal run). It
//! serves Firecracker's API on the `--api-sock` hearth gives it, refusing anything outside the
//! spec or Firecracker's order, and after `InstanceStart` answers the vsock handshake on the
//! socket hearth configured, joining each connection to a real `hearth-guest serve` it started.
//! So everything of hearth's runs for real: store, netns and firewall, tap and bridge, the
//! supervisor's relay with its `CONNECT` handshake, exec through it, `PATCH /vm`, the audit of
//! a VMM seccomp fault, and removal. The guest image is a stand-in too (the fake boots
//! nothing): files at the paths `hearth image build` and `hearth image kernel` would make.

mod common;
#[path = "../../hearth-sandbox/tests/fc_support/mod.rs"]
mod fc_support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{env, guest_bin, hearth, leftovers, ok, run, stderr, stdout};
use fc_support::fake_api::{Behaviour, FakeApi, Recorded};

const FAKE: &str = "HEARTH_TEST_FAKE_FC";
const FAKE_GUEST: &str = "HEARTH_TEST_FAKE_FC_GUEST";
const FAULT_AT: &str = "HEARTH_TEST_FAKE_FC_FAULT_AT";
/// Set by the fake jailer: the jail's root, where the real jailer would chroot.
const ROOT: &str = "HEARTH_TEST_FAKE_FC_ROOT";
/// A directory where each fake VMM appends its API requests, to `<sandbox id>.jsonl`.
const RECORD_DIR: &str = "HEARTH_TEST_FAKE_FC_RECORD_DIR";
/// Where the fake answers and logs the guest's thaw (see `Behaviour::thaw_log`).
const THAW_LOG: &str = "HEARTH_TEST_FAKE_FC_THAW_LOG";
/// An API path the fake refuses with a 400 and a fault message, as Firecracker does.
const FAIL_AT: &str = "HEARTH_TEST_FAKE_FC_FAIL_AT";

/// The fake VMM's entry point; a no-op unless hearth started this binary as `firecracker`.
#[test]
fn fake_firecracker_vmm() {
    if std::env::var_os(FAKE).is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let flag = |name: &str| args[args.iter().position(|a| a == name).unwrap() + 1].clone();
    let root = std::env::var_os(ROOT).map(PathBuf::from);
    let resolve = {
        let root = root.clone();
        move |path: &str| match &root {
            Some(root) => root.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    };
    let api_sock = resolve(&flag("--api-sock"));
    let guest_sock = api_sock.with_file_name("fake-guest.sock");
    let guest = std::env::var_os(FAKE_GUEST).unwrap();
    let mut cmd = Command::new(guest);
    cmd.arg("serve")
        .arg("--listen")
        .arg(&guest_sock)
        .env("HEARTH_GUEST_LOG", "warn")
        .stdin(Stdio::null());
    // The stand-in guest must die with the fake VMM, as a real guest does.
    let die_with_parent = || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes two integers and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(die_with_parent);
    }
    let mut guest = cmd.spawn().unwrap();
    std::thread::spawn(move || {
        let _ = guest.wait();
    });
    let fault_at = std::env::var(FAULT_AT).ok();
    let logger: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let mut api = FakeApi::new(Behaviour {
        guest: Some(guest_sock),
        thaw_log: std::env::var_os(THAW_LOG).map(PathBuf::from),
        fail: std::env::var(FAIL_AT)
            .map(|path| [(path, "Refused by the fake for this test".to_owned())].into())
            .unwrap_or_default(),
    });
    // Direct: `--id ID`; through the (fake) jailer: `--id=ID`.
    let id = args
        .iter()
        .position(|a| a == "--id")
        .map(|i| args[i + 1].clone())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--id=").map(str::to_owned))
        })
        .unwrap();
    let record =
        std::env::var_os(RECORD_DIR).map(|dir| PathBuf::from(dir).join(format!("{id}.jsonl")));
    if let Some(root) = root {
        api = api.chrooted(root);
    }
    let api = api.on_record(move |r: &Recorded| {
        if let Some(record) = &record {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(record)
                .unwrap();
            writeln!(file, "{}", serde_json::to_string(r).unwrap()).unwrap();
        }
        if r.path == "/logger" {
            let path = r.body.as_ref().and_then(|b| b["log_path"].as_str());
            *logger.lock().unwrap() = path.map(&resolve);
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        api.serve(&api_sock);
        std::future::pending::<()>().await;
    });
}

/// A `firecracker` script running the fake VMM with `env`.
fn fake_firecracker(dir: &Path, env: &[(&str, &str)]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // `--version` as Firecracker answers it (snapshots record it; a restore compares).
    let mut text = format!(
        "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'Firecracker v1.17.0-dev'; exit 0; }}\n\
         export {FAKE}=1\nexport {FAKE_GUEST}='{}'\n",
        guest_bin().display()
    );
    for (key, value) in env {
        text.push_str(&format!("export {key}='{value}'\n"));
    }
    text.push_str(&format!(
        "exec '{}' fake_firecracker_vmm --exact --nocapture -- \"$@\"\n",
        exe.display()
    ));
    let script = dir.join("firecracker");
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A `jailer` standing in for Firecracker's: it reads the flags hearth passes, joins the
/// netns and runs the exec file with the jail root where the real one would chroot (the fake
/// VMM resolves its paths under it). It stays root: the uid drop is the real jailer's.
fn fake_jailer(dir: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
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
export {ROOT}="$root"
exec nsenter --net="$netns" "$exec_file" --id="$id" "$@"
"#
    );
    let path = dir.join("jailer");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Stand-in image files where hearth looks for the guest image and the Firecracker kernel.
fn fake_images() {
    use std::os::unix::fs::DirBuilderExt;
    let state = &env().state_dir;
    let hash = "f".repeat(64);
    let key = "e".repeat(64);
    let images = state.join("images");
    let kernels = state.join("kernels/firecracker");
    for dir in [state.clone(), images.join(&hash), kernels.join(&key)] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .unwrap();
    }
    for name in [
        "vmlinuz",
        "initramfs.cpio.gz",
        "baseline.cpio.gz",
        "rootfs.ext4",
    ] {
        std::fs::write(images.join(&hash).join(name), name).unwrap();
    }
    let manifest = serde_json::json!({
        "hash": hash, "recipe_version": 1, "kernel_package": "linux-image-amd64",
        "kernel_release": "6.1.0-test", "modules": [], "packages": [],
        "guest_sha256": "0", "built_at": 0
    });
    std::fs::write(
        images.join(&hash).join("manifest.json"),
        manifest.to_string(),
    )
    .unwrap();
    std::fs::write(images.join("current"), &hash).unwrap();
    std::fs::write(kernels.join(&key).join("vmlinux"), "vmlinux").unwrap();
    std::fs::write(kernels.join("current"), &key).unwrap();
}

/// Asserts that a hearth run succeeded and returns its output.
fn ok_output(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// `fc_cmd`, which must succeed.
fn fc_ok(firecracker: &Path, args: &[&str]) -> std::process::Output {
    ok_output(fc_cmd(firecracker, args))
}

/// hearth with the fake Firecracker under the fake jailer.
fn jailed_cmd(firecracker: &Path, jailer: &Path, args: &[&str]) -> std::process::Output {
    hearth()
        .arg("--firecracker-bin")
        .arg(firecracker)
        .arg("--jailer-bin")
        .arg(jailer)
        .args(args)
        .output()
        .unwrap()
}

fn fc_cmd(firecracker: &Path, args: &[&str]) -> std::process::Output {
    hearth()
        .arg("--firecracker-bin")
        .arg(firecracker)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn image_kernel_refuses_a_missing_config_in_one_line() {
    // Also proves `image kernel --firecracker` parses next to the global --firecracker-bin.
    let out = run(&[
        "image",
        "kernel",
        "--firecracker",
        "--config",
        "/nonexistent/x.config",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/x.config"), "{err}");
    let out = run(&["image", "kernel"]);
    assert_eq!(out.status.code(), Some(2), "--firecracker is required");
}

#[test]
fn a_vmm_filter_that_cannot_work_is_refused_in_one_line() {
    // `default` needs two actions besides allow; a uniform VMM filter has one.
    let out = run(&["--firecracker-seccomp", "default", "sandbox", "ls"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--firecracker-seccomp default"), "{err}");
    let out = run(&["--firecracker-seccomp", "builtin", "sandbox", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn without_a_firecracker_binary_the_backend_is_unavailable_with_exit_6() {
    let out = hearth()
        .args(["--firecracker-bin", "/nonexistent/firecracker"])
        .args([
            "sandbox",
            "create",
            "--id",
            "fc-none",
            "--backend",
            "firecracker",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("firecracker backend is not available")
            && err.contains("/nonexistent/firecracker"),
        "{err}"
    );
    // Nothing is found on PATH here either (no Firecracker can be installed on these hosts).
    if hearth_sandbox::backend::oci::runtime::find_in_path("firecracker").is_none() {
        let out = run(&[
            "sandbox",
            "create",
            "--id",
            "fc-none",
            "--backend",
            "firecracker",
        ]);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(stderr(&out).contains("not on PATH"), "{}", stderr(&out));
    }
    assert!(
        leftovers("fc-none").is_empty(),
        "{:?}",
        leftovers("fc-none")
    );
}

#[test]
fn a_workspace_is_refused_in_one_line_since_firecracker_shares_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let fc = fake_firecracker(tmp.path(), &[]);
    let out = fc_cmd(
        &fc,
        &[
            "sandbox",
            "create",
            "--id",
            "fc-ws",
            "--backend",
            "firecracker",
            "--workspace",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--workspace"), "{err}");
    assert!(leftovers("fc-ws").is_empty(), "{:?}", leftovers("fc-ws"));
    let out = run(&["sandbox", "ls", "--json"]);
    assert!(
        !stdout(&out).contains("fc-ws"),
        "no record: {}",
        stdout(&out)
    );
}

#[test]
fn create_exec_pause_resume_and_rm_through_the_vmm_and_a_fault_reaches_the_audit() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let fc = fake_firecracker(tmp.path(), &[]);
    let id = "fc-cli";
    let out = fc_ok(
        &fc,
        &["sandbox", "create", "--id", id, "--backend", "firecracker"],
    );
    assert_eq!(stdout(&out).trim(), id);
    // Removed on failure too (without --firecracker-bin: removal needs no binary).
    let _cleanup = common::Sandbox { id: id.to_owned() };

    // exec goes CLI -> guest socket -> supervisor's relay -> CONNECT 1024 -> guest.
    // The stand-in guest runs on the host, where there is no /workspace.
    let out = fc_ok(
        &fc,
        &[
            "sandbox",
            "exec",
            id,
            "--cwd",
            "/",
            "--",
            "sh",
            "-c",
            "echo through-vsock",
        ],
    );
    assert_eq!(stdout(&out), "through-vsock\n");
    let vm = env().runtime_dir.join("sandboxes").join(id).join("vm");
    assert!(vm.join("api.sock").exists() && vm.join("vsock.sock").exists());
    let ns = format!("/run/netns/hearth-{id}");
    let tap = Command::new("ip")
        .args(["-n", &format!("hearth-{id}"), "-o", "link", "show", "tap0"])
        .output()
        .unwrap();
    assert!(
        stdout(&tap).contains("master br0"),
        "tap0 bridged in {ns}: {}",
        stderr(&tap)
    );

    assert_eq!(
        ok(&[
            "--firecracker-bin",
            fc.to_str().unwrap(),
            "sandbox",
            "pause",
            id
        ])
        .trim(),
        format!("{id} paused")
    );
    assert_eq!(
        ok(&[
            "--firecracker-bin",
            fc.to_str().unwrap(),
            "sandbox",
            "resume",
            id
        ])
        .trim(),
        format!("{id} running")
    );
    assert!(!fake_vmms(id).is_empty(), "the fake VMM runs");
    fc_ok(&fc, &["sandbox", "rm", id]);
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    assert!(fake_vmms(id).is_empty(), "{:?}", fake_vmms(id));

    // A VMM whose own seccomp filter kills it (exit 148) during PATCH /vm: the pause fails,
    // and the syscall lands in the sandbox's audit as a VMM fault.
    let faulty = fake_firecracker(tmp.path(), &[(FAULT_AT, "/vm")]);
    let id = "fc-fault";
    let out = fc_cmd(
        &faulty,
        &["sandbox", "create", "--id", id, "--backend", "firecracker"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let _cleanup = common::Sandbox { id: id.to_owned() };
    let out = fc_cmd(&faulty, &["sandbox", "pause", id]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let audit = fc_cmd(&faulty, &["sandbox", "audit", id, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&audit.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&audit)));
    // Recorded once, with the syscall number from Firecracker's log line, and the sandbox is
    // marked exited.
    let faults: Vec<&serde_json::Value> = report["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.to_string().contains("vmm_fault"))
        .collect();
    assert_eq!(faults.len(), 1, "{report}");
    assert!(
        faults[0].to_string().contains("\"syscall_nr\":41"),
        "{report}"
    );
    assert_eq!(report["status"], "exited", "{report}");
    // Removal works even where Firecracker is gone: nothing of the VM may outlive it.
    let out = run(&[
        "--firecracker-bin",
        "/nonexistent/firecracker",
        "sandbox",
        "rm",
        id,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    assert!(fake_vmms(id).is_empty(), "{:?}", fake_vmms(id));
}

/// The fake VMM (a `firecracker_backend` test binary with `fake_firecracker_vmm`) and its
/// stand-in guest are gone once a sandbox's VM is removed.
fn fake_vmms(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = cmdline.contains(&env().runtime_dir.display().to_string())
            || cmdline.contains("fake_firecracker_vmm");
        let named = [
            format!("sandboxes/{id}/"),
            format!("firecracker/{id}/"),
            format!("--id={id} "),
        ];
        if ours && named.iter().any(|n| cmdline.contains(n.as_str())) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn a_jailed_vm_is_reached_through_the_jails_vsock_socket_and_rm_removes_the_jail() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let fc = fake_firecracker(tmp.path(), &[]);
    let jailer = fake_jailer(tmp.path());
    let id = "fcj";
    let with = |args: &[&str]| jailed_cmd(&fc, &jailer, args);
    ok_output(with(&[
        "sandbox",
        "create",
        "--id",
        id,
        "--backend",
        "firecracker",
    ]));
    let _cleanup = common::Sandbox { id: id.to_owned() };
    let root = env()
        .runtime_dir
        .join("jail/firecracker")
        .join(id)
        .join("root");
    // The relay found the guest through the socket inside the jail, not in vm/.
    assert!(root.join("vsock.sock").exists() && root.join("vmlinux").exists());
    let vm = env().runtime_dir.join("sandboxes").join(id).join("vm");
    assert!(!vm.join("vsock.sock").exists());
    let out = ok_output(with(&[
        "sandbox", "exec", id, "--cwd", "/", "--", "echo", "jailed",
    ]));
    assert_eq!(stdout(&out), "jailed\n");
    ok_output(with(&["sandbox", "rm", id]));
    assert!(!root.parent().unwrap().exists(), "the jail is removed");
    assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    assert!(fake_vmms(id).is_empty(), "{:?}", fake_vmms(id));
}

/// The API requests the fake VMM of sandbox `id` received, as `METHOD PATH` and their bodies.
fn requests(records: &Path, id: &str) -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(records.join(format!("{id}.jsonl"))).unwrap_or_default();
    text.lines()
        .map(|line| {
            let r: Recorded = serde_json::from_str(line).unwrap();
            (
                format!("{} {}", r.method, r.path),
                r.body.unwrap_or_default(),
            )
        })
        .collect()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(out), stderr(out)))
}

#[test]
fn a_snapshot_restores_as_a_new_sandbox_after_its_source_is_gone() {
    use std::os::unix::fs::PermissionsExt;
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let records = tmp.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let thaws = tmp.path().join("thaws.jsonl");
    let fc = fake_firecracker(
        tmp.path(),
        &[
            (RECORD_DIR, records.to_str().unwrap()),
            (THAW_LOG, thaws.to_str().unwrap()),
        ],
    );
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
    let jailer = fake_jailer(tmp.path());
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

/// Removes snapshots when dropped, so a failed test leaves none behind for the next run.
struct Snapshots(Vec<&'static str>);

impl Drop for Snapshots {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = run(&["sandbox", "snapshot-rm", name]);
        }
    }
}

#[test]
fn a_failed_snapshot_leaves_no_files_and_the_vm_running() {
    fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let records = tmp.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let fc = fake_firecracker(
        tmp.path(),
        &[
            (RECORD_DIR, records.to_str().unwrap()),
            (FAIL_AT, "/snapshot/create"),
        ],
    );
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
