//! What the CLI prints, end to end: a closed pipe ends it quietly (no panic, no message, exit
//! 141), what a workload chose reaches the operator's terminal escaped, and `sandbox exec`
//! relays a command's output byte for byte unless it goes to a terminal.

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Output, Stdio};

use common::{ok, run, stderr, stdout, Sandbox};
use serde_json::Value;

/// hearth's exit status when its output was closed (128 + SIGPIPE).
const OUTPUT_CLOSED: i32 = 141;

/// `cmd` with stdout on a pipe whose read end is already closed: its first write fails (EPIPE).
fn with_closed_stdout(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(Stdio::from(OwnedFd::from(writer)))
        .stderr(Stdio::piped())
        .output()
        .expect("run hearth")
}

/// hearth without the shared test roots, for commands that need no sandbox.
fn bare(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::hearth_bin());
    cmd.env("HEARTH_STATE_DIR", dir.join("state"))
        .env("HEARTH_RUNTIME_DIR", dir.join("run"))
        .env_remove("RUST_LOG")
        .args(args);
    cmd
}

fn assert_quiet_close(what: &str, out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {err}");
    assert_eq!(out.status.code(), Some(OUTPUT_CLOSED), "{what}: {err}");
    assert_eq!(err, "", "{what}: a closed pipe is not an error to report");
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        // One large write (the BPF listing is tens of kB) and JSON.
        &["seccomp", "render", "--target", "bpf", "default"][..],
        &["seccomp", "render", "--target", "oci", "default"],
        // A table written line by line from the store.
        &["task", "ls"],
        &["task", "ls", "--json"],
    ] {
        assert_quiet_close(&args.join(" "), &with_closed_stdout(bare(tmp.path(), args)));
    }
}

/// Reading a little and then closing, as `| head -c 64` does: whatever point the writer had
/// reached, it ends without a panic or a message.
#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = bare(
        tmp.path(),
        &["seccomp", "render", "--target", "bpf", "default"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        matches!(out.status.code(), Some(0 | OUTPUT_CLOSED)),
        "{:?}: {err}",
        out.status
    );
    assert_eq!(err, "");
}

/// A closed stderr loses the error message but not the exit code that says the same.
#[test]
fn a_closed_stderr_keeps_the_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bare(
        tmp.path(),
        &["seccomp", "check", "/nonexistent/policy.toml"],
    )
    .stderr(Stdio::from(OwnedFd::from(writer)))
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// Renames itself (PR_SET_NAME) to a name with an SGR sequence, a C1 CSI and a line feed,
/// then makes a call the `default` policy audits (unshare: EPERM, recorded with its comm).
const RENAMED_DENIAL: &str = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, b"\x1b[31m\xc2\x9bx\nrow", 0, 0, 0)
print(libc.syscall(272, 0x10000000), ctypes.get_errno(), flush=True)
"#;

#[test]
fn a_workloads_process_name_reaches_the_audit_escaped() {
    let sb = Sandbox::create("co-audit-escape", &["--seccomp", "default"]);
    let out = run(&[
        "sandbox",
        "exec",
        &sb.id,
        "--",
        "python3",
        "-c",
        RENAMED_DENIAL,
    ]);
    assert_eq!(stdout(&out), "-1 1\n", "{}", stderr(&out));

    // The JSON keeps the name exactly (serde_json escapes the C0 controls itself).
    let report: Value = serde_json::from_str(&ok(&["sandbox", "audit", &sb.id, "--json"])).unwrap();
    let comms: Vec<&str> = report["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["comm"].as_str())
        .collect();
    assert!(comms.contains(&"\u{1b}[31m\u{9b}x\nrow"), "{comms:?}");

    let text = ok(&["sandbox", "audit", &sb.id]);
    assert!(text.contains("\\x1b[31m\\u{9b}x\\nrow"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{9b}'),
        "{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("row")),
        "the name forged a row: {text}"
    );

    // The same audit into a closed pipe: no panic, no message, and the sandbox untouched.
    let mut audit = common::hearth();
    audit.args(["sandbox", "audit", &sb.id]);
    assert_quiet_close("sandbox audit", &with_closed_stdout(audit));
    assert_eq!(sb.sh_ok("echo alive"), "alive\n");
}

#[test]
fn exec_output_is_raw_into_a_pipe_and_escaped_on_a_terminal() {
    let sb = Sandbox::create("co-exec-tty", &[]);
    let script = r"printf '\033[31mred\233\r\n\001\377'";
    // Into a pipe: data, byte for byte.
    let out = common::hearth()
        .args(["sandbox", "exec", &sb.id, "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"\x1b[31mred\x9b\r\n\x01\xff",
        "{}",
        stderr(&out)
    );

    // Onto a terminal: the introducers shown, not obeyed; layout characters kept.
    let shown = on_a_terminal(&sb.id, script);
    assert_eq!(shown, b"\\x1b[31mred\\x9b\r\n\\x01\xff", "{shown:?}");
}

/// Runs `sh -c script` in the sandbox with hearth's stdout on a pseudo-terminal, returning
/// what the terminal received (raw mode on, so the tty adds no `\r` of its own).
fn on_a_terminal(id: &str, script: &str) -> Vec<u8> {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut termios = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut termios);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &termios).unwrap();
    let child = common::hearth()
        .args(["sandbox", "exec", id, "--", "sh", "-c", script])
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The parent's copy of the slave went into the Command, dropped with it: once hearth exits,
    // reading the master ends (EIO) after what it wrote.
    let mut master = std::fs::File::from(pty.master);
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => shown.extend_from_slice(&buf[..n]),
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    shown
}

/// `hearth run --json` whose reader went away: the task is cancelled, as by Ctrl-C, its sandbox
/// removed, and the command ends quietly.
#[test]
fn a_run_whose_output_is_closed_is_cancelled_and_cleaned_up() {
    const PROMPT: &str = "Make the failing test pass (output closed).";
    let mut cmd = common::hearth();
    cmd.env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("HEARTH_SCRIPTED_FIXTURE")
        .args(["run", PROMPT, "--json"]);
    assert_quiet_close("run --json", &with_closed_stdout(cmd));

    let tasks: Value = serde_json::from_str(&ok(&["task", "ls", "--json"])).unwrap();
    let task = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["prompt"] == PROMPT)
        .expect("the task is recorded");
    assert_eq!(task["status"], "cancelled", "{task}");
    let id = task["id"].as_str().unwrap();
    assert!(
        common::leftovers(id).is_empty(),
        "{:?}",
        common::leftovers(id)
    );
}

/// Output of many chunks arrives whole; a reader that goes away ends the exec quietly, and the
/// guest, hung up on, kills the command (as a closed pipe kills a command run over `ssh`).
#[test]
fn exec_relays_every_chunk_and_stops_when_its_reader_goes() {
    let sb = Sandbox::create("co-exec-pipe", &[]);
    let out = run(&[
        "sandbox",
        "exec",
        &sb.id,
        "--",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|&b| b == 0));

    let mut child = common::hearth()
        .args(["sandbox", "exec", &sb.id, "--", "yes", "endless"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 16];
    let mut reader = child.stdout.take().unwrap();
    reader.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"endless\nendless\n");
    drop(reader);
    let out = child.wait_with_output().unwrap();
    assert_quiet_close("exec yes", &out);
    let mut left = String::new();
    for _ in 0..50 {
        left = sb.sh_ok("ps -eo args");
        if !left.contains("yes endless") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!left.contains("yes endless"), "still running:\n{left}");
}
