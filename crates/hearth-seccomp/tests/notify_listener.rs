//! The listener's side of the runtime protocol, driven by a stand-in runtime (no root needed),
//! plus runc's behaviour when the socket is missing (which the OCI backend relies on).

mod common;

use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use hearth_seccomp::notify::{NotifyError, NotifyListener};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

const STATE: &str = r#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":4242,"metadata":"m",
"state":{"ociVersion":"1.0.2","id":"sb-1","status":"creating","pid":4242,"bundle":"/b",
"annotations":{"a":"b"}}}"#;

/// Connects like runc: the first part of the payload with the fd, the rest in a second write.
fn fake_runtime(path: &Path, payload: &'static str, split: usize, fds: Vec<OwnedFd>) {
    let mut stream = UnixStream::connect(path).unwrap();
    let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let (head, tail) = payload.as_bytes().split_at(split);
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(head)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    thread::sleep(Duration::from_millis(50));
    stream.write_all(tail).unwrap();
}

fn pipe_fd() -> OwnedFd {
    let (read, _write) = nix::unistd::pipe().unwrap();
    read
}

#[test]
fn state_and_fd_are_received_even_when_the_payload_is_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sock");
    let listener = NotifyListener::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let p = path.clone();
    let runtime = thread::spawn(move || fake_runtime(&p, STATE, 40, vec![pipe_fd()]));
    let accepted = listener.accept_one(Duration::from_secs(10)).unwrap();
    runtime.join().unwrap();
    assert_eq!(accepted.state.pid, 4242);
    assert_eq!(accepted.state.state.id, "sb-1");
    assert_eq!(accepted.state.state.annotations["a"], "b");
    assert_eq!(accepted.state.metadata, "m");

    drop(listener);
    assert!(!path.exists(), "the socket is removed on drop");
}

#[test]
fn an_existing_path_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.sock");
    std::fs::write(&path, b"").unwrap();
    let err = NotifyListener::bind(&path).unwrap_err();
    assert!(matches!(err, NotifyError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains("taken.sock"), "{err}");
    assert!(path.exists(), "a foreign file is left alone");
}

#[test]
fn accept_times_out_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idle.sock");
    let listener = NotifyListener::bind(&path).unwrap();
    let err = listener.accept_one(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, NotifyError::AcceptTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("idle.sock"), "{err}");
}

#[test]
fn a_state_without_a_seccomp_fd_is_rejected() {
    const OTHER: &str = r#"{"ociVersion":"1.0.2","fds":["other"],"pid":1,
"state":{"ociVersion":"1.0.2","id":"x","status":"creating","bundle":"/b"}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sock");
    let listener = NotifyListener::bind(&path).unwrap();
    let p = path.clone();
    let runtime = thread::spawn(move || fake_runtime(&p, OTHER, OTHER.len(), vec![pipe_fd()]));
    let err = listener.accept_one(Duration::from_secs(10)).unwrap_err();
    runtime.join().unwrap();
    assert!(matches!(err, NotifyError::NoSeccompFd { .. }), "{err:?}");

    // Two names, one descriptor: the count check catches it before guessing.
    const TWO: &str = r#"{"ociVersion":"1.0.2","fds":["seccompFd","x"],"pid":1,
"state":{"ociVersion":"1.0.2","id":"x","status":"creating","bundle":"/b"}}"#;
    let p = path.clone();
    let runtime = thread::spawn(move || fake_runtime(&p, TWO, TWO.len(), vec![pipe_fd()]));
    let err = listener.accept_one(Duration::from_secs(10)).unwrap_err();
    runtime.join().unwrap();
    assert!(
        matches!(err, NotifyError::FdCountMismatch { received: 1, .. }),
        "{err:?}"
    );
}

/// The OCI backend's "unreachable listener fails the create" relies on this runc behaviour.
#[test]
fn runc_refuses_to_start_when_the_listener_is_missing() {
    let bundle = common::Bundle::new("nolistener");
    let missing = bundle.dir.path().join("nobody.sock");
    bundle.write_config(
        &["/usr/bin/python3", "-c", "print('ran')"],
        common::notify_seccomp(&missing, &["unshare"]),
    );
    let out = bundle.run();
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ran"),
        "the workload must not run unaudited"
    );
}
