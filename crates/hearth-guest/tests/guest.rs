//! End-to-end tests: the real `hearth-guest` binary on a socket in a tempdir, driven through
//! `GuestClient` (and raw HTTP where the client would hide what is being tested).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_proto::{ErrorKind, ExecRequest, ExitStatus, FileKind, StreamName};
use hearth_sandbox::guest_client::{GuestClient, GuestClientError, OutputChunk};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

struct Guest {
    child: Child,
    dir: tempfile::TempDir,
    client: GuestClient,
}

impl Guest {
    async fn start(extra: &[&str]) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("guest.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hearth-guest"))
            .arg("serve")
            .arg("--listen")
            .arg(&socket)
            .args(extra)
            .env("HEARTH_TEST_DAEMON_SECRET", "must-not-leak")
            .env("HEARTH_GUEST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let client = GuestClient::new(socket);
        client.wait_ready(Duration::from_secs(10)).await.unwrap();
        Guest { child, dir, client }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    }
}

#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: Vec<(StreamName, u64)>,
}

async fn run(client: &GuestClient, req: &ExecRequest) -> (Output, ExitStatus) {
    let mut out = Output::default();
    let status = client
        .exec(req, |chunk| match chunk {
            OutputChunk::Stdout(d) => out.stdout.extend(d),
            OutputChunk::Stderr(d) => out.stderr.extend(d),
            OutputChunk::Truncated {
                stream,
                dropped_bytes,
            } => out.truncated.push((stream, dropped_bytes)),
        })
        .await
        .unwrap();
    (out, status)
}

fn guest_err(err: GuestClientError) -> (u16, ErrorKind, String) {
    match err {
        GuestClientError::Guest {
            status,
            kind,
            message,
        } => (status, kind, message),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

/// Polls `cond` until it holds or 10 s pass (these machines are shared; no tight timing).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes and returns the raw response (the connection is closed by the request).
fn raw_http(socket: &Path, request: &[u8]) -> String {
    let mut stream = StdUnixStream::connect(socket).unwrap();
    stream.write_all(request).unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    resp
}

#[tokio::test]
async fn health_version_and_socket_mode() {
    let guest = Guest::start(&[]).await;
    let health = guest.client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.pid, guest.child.id());
    let version = guest.client.version().await.unwrap();
    assert_eq!(version.name, "hearth-guest");
    assert_eq!(version.protocol_version, hearth_proto::PROTOCOL_VERSION);
    let mode = std::fs::metadata(guest.client.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_separately_with_cwd_env_and_stdin() {
    let guest = Guest::start(&[]).await;
    let mut request = req(&[
        "sh",
        "-c",
        "echo out; echo err >&2; pwd; echo \"foo=$FOO secret=$HEARTH_TEST_DAEMON_SECRET\"; \
         echo \"path=$PATH\"; cat; exit 3",
    ]);
    request.env.insert("FOO".into(), "bar".into());
    request.cwd = Some(guest.dir.path().to_str().unwrap().into());
    request.stdin = Some(b"from stdin".to_vec());
    let (out, status) = run(&guest.client, &request).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "out\n{}\nfoo=bar secret=\npath=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nfrom stdin",
        guest.dir.path().display()
    );
    assert_eq!(stdout, expected);
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(status.code, Some(3));
    assert_eq!(status.signal, None);
    assert!(!status.timed_out && !status.oom_killed);
}

#[tokio::test]
async fn exec_reports_death_by_signal() {
    let guest = Guest::start(&[]).await;
    let (_, status) = run(&guest.client, &req(&["sh", "-c", "kill -TERM $$"])).await;
    assert_eq!((status.code, status.signal), (None, Some(15)));
    assert!(!status.timed_out);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let guest = Guest::start(&[]).await;
    let mut request = req(&["sh", "-c", "sleep 100 & echo $!; sleep 100"]);
    request.timeout_ms = Some(300);
    let (out, status) = run(&guest.client, &request).await;
    assert_eq!(status.signal, Some(9));
    assert!(status.timed_out);
    let bg: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The daemon is a subreaper, so the orphaned background sleep is reaped once dead.
    eventually("background sleep gone", || {
        !Path::new(&format!("/proc/{bg}")).exists()
    });
    assert_eq!(guest.client.health().await.unwrap().running, 0);
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_with_a_truncation_event() {
    let guest = Guest::start(&["--max-output", "1M"]).await;
    let request = req(&["sh", "-c", "head -c 50000000 /dev/zero; echo tail >&2"]);
    let (out, status) = run(&guest.client, &request).await;
    assert_eq!(status.code, Some(0));
    assert_eq!(out.stdout.len(), 1 << 20);
    assert_eq!(
        out.truncated,
        vec![(StreamName::Stdout, 50_000_000 - (1 << 20))]
    );
    assert_eq!(
        out.stderr, b"tail\n",
        "the other stream keeps its own budget"
    );
}

#[tokio::test]
async fn missing_binary_and_bad_cwd_are_json_errors_not_streams() {
    let guest = Guest::start(&[]).await;
    let err = guest
        .client
        .exec(&req(&["hearth-no-such-binary"]), |_| {})
        .await
        .unwrap_err();
    let (status, kind, message) = guest_err(err);
    assert_eq!((status, kind), (404, ErrorKind::NotFound));
    assert!(message.contains("hearth-no-such-binary"), "{message}");

    let mut bad_cwd = req(&["true"]);
    bad_cwd.cwd = Some("/nonexistent/dir".into());
    let err = guest.client.exec(&bad_cwd, |_| {}).await.unwrap_err();
    let (status, kind, message) = guest_err(err);
    assert_eq!((status, kind), (404, ErrorKind::NotFound));
    assert!(message.contains("/nonexistent/dir"), "{message}");
}

#[tokio::test]
async fn bad_json_is_a_400_naming_the_problem() {
    let guest = Guest::start(&[]).await;
    let body = r#"{"argv":["true"],"timeout":5}"#;
    let request = format!(
        "POST /v1/exec HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_http(guest.client.socket(), request.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains(r#""kind":"bad_request""#), "{resp}");
    assert!(resp.contains("unknown field `timeout`"), "{resp}");
}

#[tokio::test]
async fn files_round_trip_atomically_with_mode() {
    let guest = Guest::start(&[]).await;
    let path = guest.path("dir with space/a&b.txt");
    std::fs::create_dir(guest.dir.path().join("dir with space")).unwrap();
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let written = guest
        .client
        .write_file(&path, data.clone(), 0o640)
        .await
        .unwrap();
    assert_eq!(written.size, 300_000);
    assert_eq!(guest.client.read_file(&path).await.unwrap(), data);
    // Overwrite: replaced whole, and no temporary file is left beside it.
    guest
        .client
        .write_file(&path, "short", 0o600)
        .await
        .unwrap();
    assert_eq!(guest.client.read_file(&path).await.unwrap(), b"short");
    let listing = guest
        .client
        .list_dir(&guest.path("dir with space"))
        .await
        .unwrap();
    let names: Vec<_> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a&b.txt"]);
    assert_eq!(listing.entries[0].mode, 0o600);
    assert_eq!(listing.entries[0].size, 5);
}

#[tokio::test]
async fn oversized_files_are_refused_with_413_and_nothing_is_created() {
    let guest = Guest::start(&["--max-file", "1M"]).await;
    let path = guest.path("big");
    let err = guest
        .client
        .write_file(&path, vec![7u8; 2 << 20], 0o644)
        .await
        .unwrap_err();
    assert_eq!(guest_err(err).0, 413);

    // Chunked upload without a length: refused while streaming.
    let mut request = format!(
        "PUT /v1/files?path={path} HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..24 {
        request.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        request.extend(std::iter::repeat_n(b'x', 100_000));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_http(guest.client.socket(), &request);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains(r#""kind":"too_large""#), "{resp}");

    let entries: Vec<_> = std::fs::read_dir(guest.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        ["guest.sock"],
        "no file and no temporary file left"
    );

    std::fs::write(&path, vec![0u8; (1 << 20) + 1]).unwrap();
    let err = guest.client.read_file(&path).await.unwrap_err();
    assert_eq!(guest_err(err).1, ErrorKind::TooLarge);
}

#[tokio::test]
async fn stat_list_and_path_errors() {
    let guest = Guest::start(&[]).await;
    std::fs::write(guest.dir.path().join("f"), "12345").unwrap();
    std::fs::create_dir(guest.dir.path().join("d")).unwrap();
    std::os::unix::fs::symlink("f", guest.dir.path().join("l")).unwrap();

    let stat = guest.client.stat(&guest.path("f")).await.unwrap();
    assert_eq!((stat.kind, stat.size), (FileKind::File, 5));
    let link = guest.client.stat(&guest.path("l")).await.unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.symlink_target.as_deref(), Some("f"));

    let listing = guest
        .client
        .list_dir(guest.dir.path().to_str().unwrap())
        .await
        .unwrap();
    let kinds: Vec<_> = listing
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("d", FileKind::Dir),
            ("f", FileKind::File),
            ("guest.sock", FileKind::Other),
            ("l", FileKind::Symlink)
        ]
    );

    let (status, kind, _) = guest_err(guest.client.stat("relative/path").await.unwrap_err());
    assert_eq!((status, kind), (400, ErrorKind::BadRequest));
    let (status, kind, msg) = guest_err(
        guest
            .client
            .read_file(&guest.path("nope"))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, kind), (404, ErrorKind::NotFound));
    assert!(msg.contains("nope"), "errors name the path: {msg}");
    let (status, _, msg) = guest_err(guest.client.read_file("/dev/null").await.unwrap_err());
    assert_eq!(status, 400, "devices and FIFOs are not read: {msg}");
    let (status, kind, _) = guest_err(guest.client.list_dir(&guest.path("f")).await.unwrap_err());
    assert_eq!((status, kind), (400, ErrorKind::NotADirectory));
}

#[tokio::test]
async fn signals_are_forwarded_to_running_execs() {
    let guest = Guest::start(&[]).await;
    let daemon = guest.pid();
    let request = req(&[
        "sh",
        "-c",
        "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.05; done",
    ]);
    let mut stdout = Vec::new();
    let status = guest
        .client
        .exec(&request, |chunk| {
            if let OutputChunk::Stdout(data) = chunk {
                stdout.extend(&data);
                if data.starts_with(b"ready") {
                    kill(daemon, Signal::SIGUSR1).unwrap();
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(String::from_utf8(stdout).unwrap(), "ready\ngot-usr1\n");
    assert_eq!(status.code, Some(7));
    assert!(
        guest.client.health().await.is_ok(),
        "the daemon itself survives SIGUSR1"
    );
}

#[tokio::test]
async fn sigterm_stops_execs_and_exits_zero() {
    let mut guest = Guest::start(&["--shutdown-grace-ms", "5000"]).await;
    let client = guest.client.clone();
    let running = tokio::spawn(async move { run(&client, &req(&["sleep", "100"])).await });
    let socket: PathBuf = guest.client.socket().to_path_buf();
    let client = guest.client.clone();
    eventually_async(|| async { client.health().await.unwrap().running == 1 }).await;

    kill(guest.pid(), Signal::SIGTERM).unwrap();
    let (_, status) = running.await.unwrap();
    assert_eq!(status.signal, Some(15), "execs get SIGTERM first");
    let code = guest.child.wait().unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

async fn eventually_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The default profile rendered for a microVM guest: `audit_deny` as user notifications, which
/// the guest answers with EPERM and serves on `GET /v1/audit`.
#[tokio::test(flavor = "multi_thread")]
async fn audited_calls_fail_with_eperm_and_are_served_on_the_audit_endpoint() {
    let policy = hearth_seccomp::profile("default").unwrap();
    let filters = hearth_seccomp::render_bpf_notify(&policy).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bpf = dir.path().join("policy.bpf");
    std::fs::write(&bpf, hearth_proto::bpf::encode(&filters.to_raw()).unwrap()).unwrap();
    let guest = Guest::start(&["--seccomp-bpf", bpf.to_str().unwrap()]).await;

    // PTRACE_TRACEME: refused by the default profile.
    let script = "import ctypes; l = ctypes.CDLL(None, use_errno=True); \
                  print(l.ptrace(0, 0, 0, 0), ctypes.get_errno())";
    let (out, status) = run(&guest.client, &req(&["/usr/bin/python3", "-c", script])).await;
    assert_eq!(status.code, Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "-1 1",
        "{out:?}"
    );

    let page = guest.client.seccomp_audit(0).await.unwrap();
    let ptrace: Vec<_> = page
        .entries
        .iter()
        .filter(|e| e.syscall_name.as_deref() == Some("ptrace"))
        .collect();
    assert_eq!(ptrace.len(), 1, "{page:?}");
    assert_eq!(ptrace[0].comm.as_deref(), Some("python3"));
    assert_eq!(ptrace[0].source, hearth_seccomp::audit::AuditSource::Guest);
    // Resuming past everything returns nothing new; a bad cursor is a 400.
    let rest = guest.client.seccomp_audit(page.total).await.unwrap();
    assert!(
        rest.entries.is_empty() && rest.total == page.total,
        "{rest:?}"
    );
    let raw = raw_http(
        guest.client.socket(),
        b"GET /v1/audit?since=-1 HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_stdin_is_fed_closed_and_signals_reach_only_our_execs() {
    let guest = Guest::start(&[]).await;
    let client = guest.client.clone();
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
    let cat = ExecRequest {
        stdin: Some(b"first ".to_vec()),
        stdin_open: true,
        ..req(&["cat"])
    };
    let running = tokio::spawn(async move {
        let mut out = Vec::new();
        let status = client
            .exec_observed(
                &cat,
                |pid| {
                    let _ = pid_tx.send(pid);
                },
                |chunk| {
                    if let OutputChunk::Stdout(d) = chunk {
                        out.extend(d)
                    }
                },
            )
            .await
            .unwrap();
        (out, status)
    });
    let pid = pid_rx.await.unwrap();
    guest
        .client
        .proc_input(pid, bytes::Bytes::from_static(b"second"))
        .await
        .unwrap();
    guest.client.proc_close_stdin(pid).await.unwrap();
    let (out, status) = running.await.unwrap();
    assert_eq!(out, b"first second");
    assert!(status.success(), "{status:?}");
    // Its stdin went with it; the pid is no exec of ours any more.
    let (status, kind, _) = guest_err(guest.client.proc_close_stdin(pid).await.unwrap_err());
    assert_eq!((status, kind), (404, ErrorKind::NotFound));
    let (_, kind, _) = guest_err(guest.client.proc_signal(pid, 9).await.unwrap_err());
    assert_eq!(kind, ErrorKind::NotFound);
    // pid 1 (or any process not exec'd here) is never signalled.
    let (_, kind, _) = guest_err(guest.client.proc_signal(1, 9).await.unwrap_err());
    assert_eq!(kind, ErrorKind::NotFound);

    let client = guest.client.clone();
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
    let sleeper = tokio::spawn(async move {
        client
            .exec_observed(
                &req(&["sleep", "30"]),
                |pid| {
                    let _ = pid_tx.send(pid);
                },
                |_| {},
            )
            .await
            .unwrap()
    });
    let pid = pid_rx.await.unwrap();
    guest.client.proc_signal(pid, 15).await.unwrap();
    assert_eq!(sleeper.await.unwrap().signal, Some(15));
    let (_, kind, _) = guest_err(guest.client.proc_signal(pid, 99).await.unwrap_err());
    assert_eq!(kind, ErrorKind::BadRequest);
}

#[tokio::test]
async fn mkdir_rename_and_remove() {
    let guest = Guest::start(&[]).await;
    let c = &guest.client;
    let nested = guest.path("a/b/c");
    let made = c.mkdir(&nested).await.unwrap();
    assert!(made.created);
    assert!(!c.mkdir(&nested).await.unwrap().created, "already there");
    c.write_file(&guest.path("a/b/c/f"), b"x".to_vec(), 0o644)
        .await
        .unwrap();
    let (_, kind, _) = guest_err(c.mkdir(&guest.path("a/b/c/f")).await.unwrap_err());
    assert_eq!(kind, ErrorKind::AlreadyExists, "a file is in the way");
    let moved = c
        .rename(&guest.path("a/b/c/f"), &guest.path("a/g"))
        .await
        .unwrap();
    assert_eq!((moved.kind, moved.size), (FileKind::File, 1));
    // A symlink out of the tree is removed, not followed.
    let outside = guest.path("outside");
    c.write_file(&outside, b"keep".to_vec(), 0o644)
        .await
        .unwrap();
    std::os::unix::fs::symlink(&outside, guest.dir.path().join("a/b/link")).unwrap();
    c.remove(&guest.path("a")).await.unwrap();
    assert!(!guest.dir.path().join("a").exists());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
    let (_, kind, _) = guest_err(c.remove(&guest.path("a")).await.unwrap_err());
    assert_eq!(kind, ErrorKind::NotFound);
    let (_, kind, _) = guest_err(c.remove("/").await.unwrap_err());
    assert_eq!(kind, ErrorKind::BadRequest);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_changes_also_in_new_subdirectories() {
    let guest = Guest::start(&[]).await;
    let root = guest.path("watched");
    std::fs::create_dir(&root).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = guest.client.clone();
    let watched = root.clone();
    let watching = tokio::spawn(async move {
        client
            .watch(&watched, true, |event| tx.send(event).is_ok())
            .await
    });
    assert_eq!(rx.recv().await, Some(hearth_proto::WatchEvent::Started));
    let c = &guest.client;
    c.mkdir(&format!("{root}/sub")).await.unwrap();
    c.write_file(&format!("{root}/sub/new.txt"), b"x".to_vec(), 0o644)
        .await
        .unwrap();
    c.remove(&format!("{root}/sub/new.txt")).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|(op, name): &(hearth_proto::WatchOp, String)| {
            *op == hearth_proto::WatchOp::Remove && name == "sub/new.txt"
        })
    {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no remove event; saw {seen:?}"));
        if let Some(hearth_proto::WatchEvent::Event { op, name }) = event {
            seen.push((op, name));
        }
    }
    assert!(
        seen.contains(&(hearth_proto::WatchOp::Create, "sub".to_owned())),
        "{seen:?}"
    );
    // The write goes to a temp file renamed into place: the new name is created there.
    assert!(
        seen.iter()
            .any(|(op, name)| *op == hearth_proto::WatchOp::Create && name == "sub/new.txt"),
        "{seen:?}"
    );
    // The watched directory going away ends the stream.
    std::fs::remove_dir_all(&root).unwrap();
    tokio::time::timeout(Duration::from_secs(10), watching)
        .await
        .expect("the stream ends with its directory")
        .unwrap()
        .unwrap();
    let (_, kind, _) = guest_err(
        guest
            .client
            .watch(&guest.path("nope"), false, |_| true)
            .await
            .unwrap_err(),
    );
    assert_eq!(kind, ErrorKind::NotFound);
}
