//! The attacks of the security review, each tried for real against OCI sandboxes (real runc,
//! user namespaces, loop-mounted workspaces), each of which must fail. The QEMU side is in
//! `vm_qemu.rs`, which already pays for a booted VM.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env, ok, run, stderr, stdout, Sandbox};
use serde_json::Value;

/// Where a sandbox's `/workspace` is mounted on the host.
fn workspace_on_host(id: &str) -> PathBuf {
    env()
        .runtime_dir
        .join("sandboxes")
        .join(id)
        .join("workspace")
}

/// The host uid the sandbox's root runs as.
fn host_root_of(id: &str) -> u32 {
    let ls: Value = serde_json::from_str(&ok(&["sandbox", "ls", "--json"])).unwrap();
    let record = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {ls}"));
    u32::try_from(record["host_ids"]["base"].as_u64().unwrap()).unwrap()
}

/// Every way the review's plant and its variants could set a setuid/setgid bit.
const PLANT: &str = "cp /bin/sh /workspace/sh; \
    chmod 4755 /workspace/sh; echo chmod=$?; \
    chmod g+s /workspace/sh; echo chmod_g=$?; \
    install -m 4755 /bin/sh /workspace/installed; echo install=$?; \
    mkdir -m 2755 /workspace/dir; echo mkdir=$?; \
    python3 -c 'import os; os.open(\"/workspace/created\", os.O_CREAT | os.O_WRONLY, 0o4755)'; \
    echo open=$?";

fn assert_nothing_special(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        assert_eq!(
            meta.mode() & 0o6000,
            0,
            "{} carries setuid/setgid bits on the host: {:o}",
            entry.path().display(),
            meta.mode()
        );
    }
}

#[test]
fn a_setuid_plant_in_a_private_workspace_is_neither_setuid_nor_root_owned() {
    let sb = Sandbox::create("hard-plant", &[]);
    let out = sb.sh_ok(PLANT);
    for refused in ["chmod=1", "chmod_g=1", "install=1", "mkdir=1", "open=1"] {
        assert!(out.contains(refused), "{refused} in {out}");
    }
    let dir = workspace_on_host(&sb.id);
    assert_nothing_special(&dir);
    let root = host_root_of(&sb.id);
    assert!(
        root >= 0x7000_0000,
        "the sandbox's root is an unprivileged id: {root}"
    );
    let copied = std::fs::metadata(dir.join("sh")).unwrap();
    assert_eq!(copied.uid(), root, "written as the sandbox's own host id");
    // The workspace is a filesystem of its own, mounted nosuid on the host as well.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not a mount point", dir.display()));
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    // Every refusal was audited.
    let audit: Value = serde_json::from_str(&ok(&["sandbox", "audit", &sb.id, "--json"])).unwrap();
    let denied = audit.to_string();
    assert!(
        denied.contains("\"chmod\"") || denied.contains("fchmodat"),
        "{denied}"
    );
}

#[test]
fn a_plant_in_a_shared_workspace_lands_as_its_owner_without_special_bits() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(shared.path(), Some(1000), Some(1000)).unwrap();
    let ws = shared.path().to_str().unwrap().to_owned();
    let sb = Sandbox::create("hard-shared", &["--workspace", &ws]);
    // The owner of the directory is the sandbox's root inside.
    assert_eq!(sb.sh_ok("stat -c %u:%g /workspace"), "0:0\n");
    let out = sb.sh_ok(PLANT);
    assert!(out.contains("chmod=1") && out.contains("open=1"), "{out}");
    assert_nothing_special(shared.path());
    let copied = std::fs::metadata(shared.path().join("sh")).unwrap();
    assert_eq!(
        (copied.uid(), copied.gid()),
        (1000, 1000),
        "owned by the dir's owner"
    );
    drop(sb);
    // Removing the sandbox detached the view; the user's files stay.
    assert!(shared.path().join("sh").exists());
}

/// `setpriv` as the unprivileged `nobody`: what any local user could do.
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn other_local_users_can_read_no_sandbox_or_task_files() {
    let sb = Sandbox::create("hard-closed", &[]);
    sb.sh_ok("echo secret > /workspace/file");
    let env = env();
    let file = workspace_on_host(&sb.id).join("file");
    for path in [
        env.state_dir.clone(),
        env.runtime_dir.join("sandboxes"),
        env.runtime_dir.join("sandboxes").join(&sb.id),
    ] {
        let listed = as_nobody(&["ls", path.to_str().unwrap()]);
        assert!(!listed.status.success(), "nobody listed {}", path.display());
    }
    let read = as_nobody(&["cat", file.to_str().unwrap()]);
    assert!(!read.status.success(), "nobody read {}", file.display());
    let mode = std::fs::metadata(&env.state_dir).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // A task's workspace, handed back after the task, too.
    let out = common::hearth()
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("HEARTH_SCRIPTED_FIXTURE")
        .args(["run", "Make the failing test pass.", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let tasks = env.state_dir.join("tasks");
    assert_eq!(std::fs::metadata(&tasks).unwrap().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&tasks).unwrap() {
        let dir = entry.unwrap().path();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let ws = dir.join("workspace");
        assert!(ws.is_dir(), "the task's workspace was handed back");
        let listed = as_nobody(&["ls", ws.to_str().unwrap()]);
        assert!(!listed.status.success(), "nobody listed {}", ws.display());
    }
}

#[test]
fn a_task_cannot_plant_a_setuid_file_in_what_it_hands_back() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = tmp.path().join("fixture.json");
    let plant = "cp /bin/sh .x; chmod 4755 .x; echo chmod=$?; python3 -c 'import os; os.mkfifo(\"fifo\")' && echo fifo-made; ln -s /etc/shadow link; echo planted";
    let turns = serde_json::json!([
        {"tool_calls": [{"name": "shell", "arguments": {"command": plant}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        {"content": "done", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    ]);
    std::fs::write(
        &fixture,
        serde_json::json!({"name": "plant", "description": "plants", "turns": turns}).to_string(),
    )
    .unwrap();
    let out = common::hearth()
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env("HEARTH_SCRIPTED_FIXTURE", &fixture)
        .args(["run", "Plant.", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = stdout(&out);
    let line = result
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"result\""))
        .unwrap();
    let task: Value = serde_json::from_str::<Value>(line).unwrap()["task"].clone();
    let dir = env()
        .state_dir
        .join("tasks")
        .join(task["id"].as_str().unwrap())
        .join("workspace");
    let planted = std::fs::symlink_metadata(dir.join(".x")).unwrap();
    assert_eq!(
        planted.mode() & 0o7777,
        0o755,
        "copied, without special bits"
    );
    assert_eq!(planted.uid(), 0, "handed back owned by hearth's user");
    assert!(!dir.join("fifo").exists(), "no FIFO handed back");
    let link = std::fs::symlink_metadata(dir.join("link")).unwrap();
    assert!(link.file_type().is_symlink(), "a link stays a link");
}

#[test]
fn the_workload_can_neither_reach_nor_replace_the_guest_channel() {
    let a = Sandbox::create("hard-chan-a", &[]);
    let b = Sandbox::create("hard-chan-b", &[]);
    // Inside: no socket to replace, a read-only /.hearth, PID 1 closed.
    let out = a.sh(
        "ls -A /.hearth; touch /.hearth/x 2>&1; ln -s /tmp /.hearth/guest.sock 2>&1; \
         ls /proc/1/fd/ >/dev/null; readlink -v /proc/1/fd/3 2>&1; cat /proc/1/environ 2>&1; \
         python3 -c 'open(\"/proc/1/mem\", \"r+b\")' 2>&1 | tail -1; \
         ls /proc/self/fd | tr '\\n' ' '; true",
    );
    let text = stdout(&out);
    assert_eq!(text.lines().next(), Some("hearth-guest"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert_eq!(text.matches("Permission denied").count(), 3, "{text}");
    // The workload holds no fd of hearth-guest's (the channel is fd 3 of PID 1 alone): ls
    // sees its stdio and the directory it lists.
    let fds = text.lines().last().unwrap_or_default();
    assert_eq!(fds.split_whitespace().count(), 4, "{text}");

    // On the host, a guest socket swapped for a link to another sandbox's is refused, not
    // followed: hearth never runs a command of A's in B.
    let dirs = env().runtime_dir.join("sandboxes");
    let a_socket = dirs.join(&a.id).join("guest.sock");
    let saved = dirs.join(&a.id).join("guest.sock.saved");
    std::fs::rename(&a_socket, &saved).unwrap();
    std::os::unix::fs::symlink(dirs.join(&b.id).join("guest.sock"), &a_socket).unwrap();
    let swapped = run(&["sandbox", "exec", &a.id, "--", "hostname"]);
    assert!(!swapped.status.success());
    assert!(!stdout(&swapped).contains(&b.id), "ran in B");
    assert!(
        stderr(&swapped).contains("refusing guest socket"),
        "{}",
        stderr(&swapped)
    );
    std::fs::remove_file(&a_socket).unwrap();
    std::fs::rename(&saved, &a_socket).unwrap();
    assert_eq!(a.sh_ok("hostname"), format!("{}\n", a.id));
}

/// Serves `body` forever-ish to every connection: a guest that lies about sizes.
fn serve_lies(socket: &Path, kind: &'static str) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut out = stream;
            let chunk = match kind {
                "file" => vec![b'x'; 1 << 20],
                _ => {
                    let event = hearth_proto::ExecEvent::Stdout {
                        data: vec![b'y'; 64 * 1024],
                    };
                    format!("{}\n", serde_json::to_string(&event).unwrap()).into_bytes()
                }
            };
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n",
            );
            // 300 MiB, as in the review, unless the client hangs up first.
            for _ in 0..300 {
                let framed = [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk.clone(),
                    b"\r\n".to_vec(),
                ]
                .concat();
                if out.write_all(&framed).is_err() {
                    break;
                }
            }
        }
    })
}

#[test]
fn a_guest_that_streams_more_than_the_caps_is_cut_at_the_caps() {
    let sb = Sandbox::create("hard-liar", &[]);
    let socket = env()
        .runtime_dir
        .join("sandboxes")
        .join(&sb.id)
        .join("guest.sock");
    let real = socket.with_extension("real");
    std::fs::rename(&socket, &real).unwrap();

    let liar = serve_lies(&socket, "file");
    let local = tempfile::tempdir().unwrap();
    let target = local.path().join("got");
    let out = run(&[
        "sandbox",
        "cp",
        &format!("{}:/big", sb.id),
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("cut off"), "{}", stderr(&out));
    assert!(!target.exists(), "nothing half-written");
    drop(liar);
    std::fs::remove_file(&socket).unwrap();

    let liar = serve_lies(&socket, "exec");
    let out = run(&["sandbox", "exec", &sb.id, "--", "true"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let printed = out.stdout.len();
    assert!(
        printed <= 16 << 20,
        "at most the 16 MiB cap reached stdout: {printed}"
    );
    drop(liar);
    std::fs::remove_file(&socket).unwrap();
    std::fs::rename(&real, &socket).unwrap();
    sb.sh_ok("true");
}

#[test]
fn disk_tmpfs_and_fd_floods_stop_at_their_quotas() {
    let disk = Sandbox::create("hard-disk", &["--disk", "64M"]);
    let memory = Sandbox::create("hard-tmpfs", &["--memory", "256M"]);
    let neighbour = Sandbox::create("hard-neighbour", &[]);
    // The workspace fills up at its quota, not the host's disk.
    let out = disk.sh("dd if=/dev/zero of=/workspace/fill bs=1M count=200 2>&1; true");
    assert!(stdout(&out).contains("No space left"), "{}", stdout(&out));
    // Its image lives on disk in the state dir (the runtime root may be a tmpfs), closed to others.
    let images = env().state_dir.join("workspaces");
    assert_eq!(std::fs::metadata(&images).unwrap().mode() & 0o777, 0o700);
    let image = images.join(format!("{}.img", disk.id));
    let used = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(used <= 70 << 20, "the image holds {used} bytes");
    drop(disk);
    assert!(!image.exists(), "the image goes with its sandbox");
    // tmpfs: each under the memory limit, together short of it, and hearth-guest survives
    // both the fill and an OOM after it.
    let out = memory.sh("dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; true");
    let text = stdout(&out);
    assert!(text.contains("No space left"), "{text}");
    assert!(
        text.contains("134217728 bytes"),
        "/tmp holds half the memory: {text}"
    );
    // The runtime's own /dev/shm and /dev are in the same budget (a sixteenth, and 4M).
    let shm = memory.sh_ok(
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 2>&1; df -k /dev/shm /dev | tail -2",
    );
    assert!(shm.contains("16777216 bytes"), "{shm}");
    assert!(
        shm.lines().last().unwrap().split_whitespace().nth(1) == Some("4096"),
        "{shm}"
    );
    memory.sh("dd if=/dev/zero of=/root/fill bs=1M count=200; true");
    // Directly, not under sh: the kill must land on the command hearth started.
    let oom = run(&[
        "sandbox",
        "exec",
        &memory.id,
        "--",
        "python3",
        "-c",
        "x = bytearray(300 << 20)",
    ]);
    assert_eq!(oom.status.code(), Some(137), "{}", stderr(&oom));
    assert!(stderr(&oom).contains("out of memory"), "{}", stderr(&oom));
    assert_eq!(memory.sh_ok("echo alive"), "alive\n");
    // Open files: RLIMIT_NOFILE, its share of the sandbox's fd budget.
    let opened = neighbour.sh_ok(
        "python3 -c '\nimport os\nn = 0\ntry:\n    while True:\n        os.open(\"/dev/null\", os.O_RDONLY); n += 1\nexcept OSError as e:\n    print(n, e.errno)'",
    );
    let (count, errno) = opened.trim().split_once(' ').unwrap();
    assert_eq!(errno, "24", "EMFILE: {opened}");
    assert!(count.parse::<u32>().unwrap() < 1024, "{opened}");
    assert_eq!(neighbour.sh_ok("echo fine"), "fine\n");
}

#[test]
fn host_side_logs_are_cut_at_their_cap() {
    let sb = Sandbox::create("hard-logs", &[]);
    let log = env()
        .runtime_dir
        .join("sandboxes")
        .join(&sb.id)
        .join("guest.log");
    // As hearth-guest writes it: appended to.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, &vec![b'z'; 12 << 20]).unwrap();
    // The cut and its note are two steps: wait for both.
    let cut = || {
        std::fs::read(&log)
            .unwrap()
            .starts_with(b"[hearth: log cut at")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cut() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cut(), "guest.log was not cut");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(len < 8 << 20, "guest.log is {len} bytes");
    sb.sh_ok("true");
}

#[test]
fn a_denied_call_flood_is_charged_to_the_sandboxs_own_supervisor_cgroup() {
    let sb = Sandbox::create("hard-charge", &[]);
    let pid_file = env()
        .runtime_dir
        .join("sandboxes")
        .join(&sb.id)
        .join("supervisor.pid");
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let pid = pid.split_whitespace().next().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = cgroups
        .lines()
        .find(|l| l.contains("hearth-supervisors"))
        .unwrap_or_else(|| panic!("supervisor in no cgroup of its own: {cgroups}"));
    assert!(
        line.ends_with(&format!("/hearth-supervisors/{}", sb.id)),
        "{line}"
    );
    let cpu = Path::new("/sys/fs/cgroup/cpu/hearth-supervisors").join(&sb.id);
    let unified = Path::new("/sys/fs/cgroup/hearth-supervisors").join(&sb.id);
    let stat = if cpu.exists() {
        cpu.join("cpu.stat")
    } else {
        unified.join("cpu.stat")
    };
    let throttled = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = throttled(&std::fs::read_to_string(&stat).unwrap());
    let flood = "import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(40000):\n    libc.unshare(0x10000000)\nprint('done')";
    let out = run(&["sandbox", "exec", &sb.id, "--", "python3", "-c", flood]);
    assert_eq!(stdout(&out), "done\n", "{}", stderr(&out));
    let after = throttled(&std::fs::read_to_string(&stat).unwrap());
    assert!(
        after > before,
        "the supervisor was held to its quota: {before} -> {after}"
    );
}
