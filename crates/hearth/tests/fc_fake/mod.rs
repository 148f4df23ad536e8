//! The stand-in Firecracker (and jailer) the CLI tests run hearth against, and helpers around it.
//!
//! Firecracker can't run here (no usable KVM), so `--firecracker-bin` points at a script that
//! execs the test binary as a fake VMM (its `fake_firecracker_vmm` test, a no-op in a normal
//! run). It serves Firecracker's API on the `--api-sock` hearth gives it, refusing anything
//! outside the spec or Firecracker's order, and after `InstanceStart` (or a snapshot load)
//! answers the vsock handshake on the socket hearth configured, joining each connection to a
//! real `hearth-guest serve` it started. The guest image is a stand-in too (the fake boots
//! nothing): files at the paths `hearth image build` and `hearth image kernel` would make.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::{env, guest_bin, hearth, run, stderr, stdout};
use hearth_test_support::firecracker::fake_api::{Behaviour, FakeApi, Recorded};
pub use hearth_test_support::firecracker::jailer::{fake_jailer, JailerTrace, JAIL_ROOT as ROOT};

pub const FAKE: &str = "HEARTH_TEST_FAKE_FC";
pub const FAKE_GUEST: &str = "HEARTH_TEST_FAKE_FC_GUEST";
pub const FAULT_AT: &str = "HEARTH_TEST_FAKE_FC_FAULT_AT";
/// A directory where each fake VMM appends its API requests, to `<sandbox id>.jsonl`.
pub const RECORD_DIR: &str = "HEARTH_TEST_FAKE_FC_RECORD_DIR";
/// Where the fake answers and logs the guest's thaw (see `Behaviour::thaw_log`).
pub const THAW_LOG: &str = "HEARTH_TEST_FAKE_FC_THAW_LOG";
/// An API path the fake refuses with a 400 and a fault message, as Firecracker does.
pub const FAIL_AT: &str = "HEARTH_TEST_FAKE_FC_FAIL_AT";

/// The fake VMM's body: a no-op unless hearth started this test binary as `firecracker` (each
/// binary using this module has a `fake_firecracker_vmm` test that calls it).
pub fn serve_if_asked() {
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
pub fn fake_firecracker(dir: &Path, env: &[(&str, &str)]) -> PathBuf {
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

/// A fake Firecracker (as [`fake_firecracker`], with `env`) whose VMMs append their API
/// requests under the returned dir, one `<sandbox id>.jsonl` each (see [`requests`]).
pub fn recording_fake(dir: &Path, env: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let records = dir.join("records");
    std::fs::create_dir(&records).unwrap();
    let mut env = env.to_vec();
    env.push((RECORD_DIR, records.to_str().unwrap()));
    let firecracker = fake_firecracker(dir, &env);
    (records, firecracker)
}

/// Stand-in image files where hearth looks for the guest image and the Firecracker kernel.
pub fn fake_images() {
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
pub fn ok_output(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// `fc_cmd`, which must succeed.
pub fn fc_ok(firecracker: &Path, args: &[&str]) -> std::process::Output {
    ok_output(fc_cmd(firecracker, args))
}

/// hearth with the fake Firecracker under the fake jailer.
pub fn jailed_cmd(firecracker: &Path, jailer: &Path, args: &[&str]) -> std::process::Output {
    hearth()
        .arg("--firecracker-bin")
        .arg(firecracker)
        .arg("--jailer-bin")
        .arg(jailer)
        .args(args)
        .output()
        .unwrap()
}

pub fn fc_cmd(firecracker: &Path, args: &[&str]) -> std::process::Output {
    hearth()
        .arg("--firecracker-bin")
        .arg(firecracker)
        .args(args)
        .output()
        .unwrap()
}

/// The fake VMM (a test binary run as `fake_firecracker_vmm`) and its
/// stand-in guest are gone once a sandbox's VM is removed.
pub fn fake_vmms(id: &str) -> Vec<String> {
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

/// The API requests the fake VMM of sandbox `id` received, as `METHOD PATH` and their bodies.
pub fn requests(records: &Path, id: &str) -> Vec<(String, serde_json::Value)> {
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

pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(out), stderr(out)))
}

/// Removes snapshots when dropped, so a failed test leaves none behind for the next run.
pub struct Snapshots(pub Vec<&'static str>);

impl Drop for Snapshots {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = run(&["sandbox", "snapshot-rm", name]);
        }
    }
}
