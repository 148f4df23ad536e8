//! Shared helpers for the CLI tests: they run the real `hearth` binary against real runc.
//!
//! All tests of one test binary share one runtime root and one state dir (made fresh per run),
//! because hearth assumes it is the only owner of `hearth-*` objects on a host and reconciles
//! anything it doesn't know: separate roots in parallel tests would clean up each other.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub struct TestEnv {
    root: tempfile::TempDir,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
}

static ENV: OnceLock<TestEnv> = OnceLock::new();

pub fn env() -> &'static TestEnv {
    ENV.get_or_init(|| {
        // Under cargo's per-target temp dir rather than /tmp, so what a failed run leaves stays
        // with the build.
        let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let root = tempfile::Builder::new()
            .prefix("hearth-test-")
            .tempdir_in(base)
            .expect("tempdir");
        // Statics are never dropped: the root goes when the test binary exits instead, unless
        // a test failed (its logs are the evidence).
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            A_TEST_FAILED.store(true, std::sync::atomic::Ordering::SeqCst);
            report(info);
        }));
        // SAFETY: atexit only stores a pointer to an `extern "C" fn` that lives for the whole
        // program.
        let registered = unsafe { libc::atexit(remove_test_root) };
        assert_eq!(registered, 0, "atexit");
        TestEnv {
            runtime_dir: root.path().join("run"),
            state_dir: root.path().join("state"),
            root,
        }
    })
}

/// Set by the first panic: a failed test's root (its logs) is kept.
static A_TEST_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Removes the shared test root at exit, unless a test failed or a sandbox is still around (its
/// supervisor or VMM could still be writing there): then it stays for a look.
extern "C" fn remove_test_root() {
    let Some(env) = ENV.get() else {
        return;
    };
    if A_TEST_FAILED.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("the test root is kept: {}", env.root.path().display());
        return;
    }
    let sandboxes = env.runtime_dir.join("sandboxes");
    let left = std::fs::read_dir(&sandboxes).map_or(0, |entries| entries.count());
    if left == 0 {
        let _ = std::fs::remove_dir_all(env.root.path());
    }
}

pub fn hearth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hearth"))
}

pub fn guest_bin() -> PathBuf {
    let path = hearth_bin().parent().unwrap().join("hearth-guest");
    assert!(
        path.is_file(),
        "{} missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A `hearth` command wired to the shared test roots.
pub fn hearth() -> Command {
    let env = env();
    let mut cmd = Command::new(hearth_bin());
    cmd.env("HEARTH_RUNTIME_DIR", &env.runtime_dir)
        .env("HEARTH_STATE_DIR", &env.state_dir)
        .env("HEARTH_GUEST_BINARY", guest_bin())
        .env_remove("RUST_LOG");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    hearth().args(args).output().expect("run hearth")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs hearth and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "hearth {args:?} failed ({:?}): {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

/// A sandbox removed when the test ends, pass or fail.
pub struct Sandbox {
    pub id: String,
}

impl Sandbox {
    pub fn create(id: &str, extra: &[&str]) -> Self {
        let mut args = vec!["sandbox", "create", "--id", id];
        args.extend_from_slice(extra);
        let printed = ok(&args);
        assert_eq!(printed.trim(), id);
        Self { id: id.to_owned() }
    }

    /// `hearth sandbox exec ID -- sh -c SCRIPT`.
    pub fn sh(&self, script: &str) -> Output {
        run(&["sandbox", "exec", &self.id, "--", "sh", "-c", script])
    }

    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script:?} failed ({:?}): {}",
            out.status.code(),
            stderr(&out)
        );
        stdout(&out)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep_logs(&self.id);
        }
        let _ = run(&["sandbox", "rm", "--force", &self.id]);
    }
}

/// Copies a sandbox's logs (supervisor, guest, VMM, console) to `<test root>/failed/<id>/`
/// before its removal takes them, and says where they are.
fn keep_logs(id: &str) {
    let from = env().runtime_dir.join("sandboxes").join(id);
    let to = env().root.path().join("failed").join(id);
    if std::fs::create_dir_all(&to).is_err() {
        return;
    }
    for dir in [from.clone(), from.join("vm")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let _ = std::fs::copy(&path, to.join(entry.file_name()));
            }
        }
    }
    eprintln!("logs of sandbox {id} kept in {}", to.display());
}

/// Every trace a sandbox could leave on the host, as a list of what is still there. The kernel
/// removes a torn-down sandbox's veth pair together with its namespace, asynchronously, so a
/// leftover must persist for two seconds to count.
pub fn leftovers(id: &str) -> Vec<String> {
    let mut found = leftovers_now(id);
    for _ in 0..20 {
        if found.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        found = leftovers_now(id);
    }
    found
}

fn leftovers_now(id: &str) -> Vec<String> {
    let env = env();
    let mut found = Vec::new();
    let dir = env.runtime_dir.join("sandboxes").join(id);
    if dir.exists() {
        found.push(format!("dir {}", dir.display()));
    }
    let image = env.state_dir.join("workspaces").join(format!("{id}.img"));
    if image.exists() {
        found.push(format!("workspace image {}", image.display()));
    }
    let netns = Path::new("/run/netns").join(format!("hearth-{id}"));
    if netns.exists() {
        found.push(format!("netns {}", netns.display()));
    }
    for controller in ["memory", "pids", "cpu", "unified", ""] {
        for tree in ["hearth", "hearth-supervisors"] {
            let cg = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(tree)
                .join(id);
            if cg.exists() {
                found.push(format!("cgroup {}", cg.display()));
            }
        }
    }
    // Only this run's sandbox dir counts: a run killed earlier on the same machine may have
    // left mounts under its own test root, with the same ids.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let under_dir = format!("{}/", dir.display());
    if mounts.lines().any(|l| l.contains(&under_dir)) {
        found.push("a mount under the sandbox dir".to_owned());
    }
    let list = Command::new("runc")
        .arg("--root")
        .arg(env.runtime_dir.join("runtime"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    if String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.trim() == format!("hearth-{id}"))
    {
        found.push(format!("container hearth-{id}"));
    }
    let table = format!("hearth_{}", id.replace('-', "_"));
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    if String::from_utf8_lossy(&tables.stdout)
        .lines()
        .any(|l| l.trim() == format!("table inet {table}"))
    {
        found.push(format!("nft table {table}"));
    }
    // Host links carry the owning sandbox in their alias (`hearth:<id>`).
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.trim_end().ends_with(&format!("alias hearth:{id}")) {
            found.push(format!(
                "link {}",
                line.split(':').nth(1).unwrap_or("?").trim()
            ));
        }
    }
    let ls = stdout(&run(&["sandbox", "ls", "--json"]));
    if ls.contains(&format!("\"{id}\"")) {
        found.push("store record".to_owned());
    }
    found
}

/// The static hearth-guest the guest image carries and template roots run (`scripts/test.sh`
/// builds it), whether or not it is there.
pub fn static_guest() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_owned();
    target.join("x86_64-unknown-linux-gnu/release/hearth-guest")
}

/// Builds the guest image into this run's state dir (about a minute: Debian packages are
/// fetched into the image cache there).
pub fn build_vm_image() {
    let guest = static_guest();
    assert!(
        guest.is_file(),
        "{} missing: build it with RUSTFLAGS='-C target-feature=+crt-static' cargo build \
         --release -p hearth-guest --target x86_64-unknown-linux-gnu (scripts/test.sh does)",
        guest.display()
    );
    let out = hearth()
        .args(["image", "build", "--json", "--guest-binary"])
        .arg(guest)
        .output()
        .unwrap();
    assert!(out.status.success(), "image build: {}", stderr(&out));
}
