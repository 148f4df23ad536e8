//! Builds the guest image and boots it under QEMU TCG: hearth-guest must come up as PID 1 and
//! answer health, exec and file requests over HTTP/2 on the virtio-serial port.
//!
//! Ignored by default (it downloads Debian packages once and boots a VM). Run it with
//! `HEARTH_GUEST_STATIC=<static hearth-guest> cargo test -p hearth-image --test vm_image -- --ignored --nocapture`
//! (build the binary with `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
//! -p hearth-guest --target x86_64-unknown-linux-gnu`). Images are cached in
//! `HEARTH_TEST_IMAGES_DIR` (default: cargo's target tmpdir), so later runs only boot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_image::{GuestImage, ImageBuilder};
use hearth_proto::{ExecEvent, ExecRequest, Health, VmGuestConfig, GUEST_SERIAL_PORT_NAME};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn images_dir() -> PathBuf {
    std::env::var_os("HEARTH_TEST_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("hearth-images"))
}

fn build_image() -> GuestImage {
    let guest = std::env::var_os("HEARTH_GUEST_STATIC")
        .expect("HEARTH_GUEST_STATIC must name a static hearth-guest (see this file's header)");
    let builder = ImageBuilder::new(images_dir(), PathBuf::from(guest));
    let started = Instant::now();
    let first = builder
        .build(&mut |step| eprintln!("image: {step}"))
        .unwrap();
    eprintln!(
        "image {} ({} MiB) ready in {:.1}s (built: {})",
        &first.image.hash[..12],
        first.image.size_bytes() >> 20,
        started.elapsed().as_secs_f64(),
        first.built
    );
    // The same inputs again: found by hash, not rebuilt.
    let second = builder.build(&mut |_| {}).unwrap();
    assert!(!second.built);
    assert_eq!(second.image, first.image);
    assert_eq!(GuestImage::current(&images_dir()).unwrap(), first.image);
    first.image
}

/// A QEMU TCG guest, killed on drop.
struct Vm {
    child: Child,
    console: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot(image: &GuestImage, initrd: &Path, dir: &Path, append: &str, extra: &[String]) -> Vm {
    let console = dir.join("console.log");
    let serial = dir.join("serial.sock");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-M", "pc", "-m", "512", "-smp", "1"])
        .args(["-nodefaults", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            image.rootfs.display()
        ))
        .args(["-device", "virtio-serial"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=hg,path={},server=on,wait=off",
            serial.display()
        ))
        .arg("-device")
        .arg(format!(
            "virtserialport,chardev=hg,name={GUEST_SERIAL_PORT_NAME}"
        ))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-append")
        .arg(append)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    Vm { child, console }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 session over QEMU's socket; abort the handle to close the socket.
async fn connect(socket: &Path) -> (Sender, tokio::task::JoinHandle<()>) {
    let stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, conn)
}

async fn request(sender: &mut Sender, method: &str, uri: &str, body: Vec<u8>) -> (u16, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://guest{uri}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

const APPEND: &str = "console=ttyS0 panic=-1 reboot=t quiet";

/// Runs `argv` in the guest; returns its stdout and whether it exited 0.
async fn exec(sender: &mut Sender, argv: &[&str]) -> (String, bool) {
    let req = ExecRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..ExecRequest::default()
    };
    let (status, body) = request(
        sender,
        "POST",
        "/v1/exec",
        serde_json::to_vec(&req).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    let events: Vec<ExecEvent> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stdout { data } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let ok = matches!(events.last(), Some(ExecEvent::Exit(st)) if st.success());
    (String::from_utf8_lossy(&stdout).into_owned(), ok)
}

/// The config drive: hostname and a seccomp filter that makes getppid (110) fail with EPERM.
fn config_drive(dir: &Path) -> PathBuf {
    let program = [
        [0x20, 0, 0, 0, 0, 0, 0, 0],
        [0x15, 0, 0, 1, 110, 0, 0, 0],
        [0x06, 0, 0, 0, 1, 0, 0x05, 0],
        [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
    ]
    .concat();
    let mut config = VmGuestConfig {
        hostname: "vm-test".into(),
        ..VmGuestConfig::default()
    };
    config.set_seccomp_bpf(&hearth_proto::bpf::encode(&[program]).unwrap());
    let path = dir.join("config.img");
    std::fs::write(&path, config.to_drive().unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds the guest image and boots QEMU; see the file header"]
async fn the_image_boots_to_hearth_guest_over_virtio_serial() {
    let image = build_image();
    let dir = tempfile::tempdir().unwrap();
    let append = format!(
        "{APPEND} hearth.transport=virtio-serial:{GUEST_SERIAL_PORT_NAME} hearth.root=/dev/vda \
         hearth.config=/dev/vdb hearth.net=10.0.2.15/24,10.0.2.2 hearth.dns=10.0.2.3"
    );
    // QEMU's user-mode network maps 10.0.2.2 to the host's loopback: a listener there shows
    // that eth0, its address and its route work.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let extra = [
        "-drive".to_string(),
        format!(
            "file={},if=virtio,format=raw,readonly=on",
            config_drive(dir.path()).display()
        ),
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let started = Instant::now();
    let vm = boot(&image, &image.initrd, dir.path(), &append, &extra);
    let (mut sender, session) = connect(&dir.path().join("serial.sock")).await;
    let health = tokio::time::timeout(
        Duration::from_secs(180),
        request(&mut sender, "GET", "/v1/health", Vec::new()),
    )
    .await;
    let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
    let (status, body) =
        health.unwrap_or_else(|_| panic!("no health in 180 s; console:\n{console}"));
    eprintln!("boot to health: {:.2}s", started.elapsed().as_secs_f64());
    assert_eq!(status, 200, "{body:?}");
    let health: Health = serde_json::from_slice(&body).unwrap();
    assert_eq!(health.pid, 1, "hearth-guest is the VM's init");

    let script = "import os, socket; print(1+1, os.getuid(), open('/proc/1/comm').read().strip(), socket.gethostname())";
    assert_eq!(
        exec(&mut sender, &["python3", "-c", script]).await,
        ("2 0 init vm-test\n".to_string(), true)
    );
    // The config drive's seccomp filter is installed in every exec.
    let denied = "import ctypes; l = ctypes.CDLL(None, use_errno=True); print(l.syscall(110), ctypes.get_errno())";
    assert_eq!(
        exec(&mut sender, &["python3", "-c", denied]).await,
        ("-1 1\n".to_string(), true)
    );
    let connect_out = format!(
        "import socket; s = socket.create_connection(('10.0.2.2', {port}), timeout=30); s.sendall(b'from-guest'); s.close()"
    );
    let connect_argv = ["python3", "-c", connect_out.as_str()];
    let (guest, host) = tokio::join!(exec(&mut sender, &connect_argv), async {
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .expect("the guest connects through eth0")
            .unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut got)
            .await
            .unwrap();
        got
    });
    assert!(guest.1, "{guest:?}");
    assert_eq!(host, b"from-guest");

    // The workspace is writable, the root is not, resolv.conf follows hearth.dns.
    let (status, _) = request(
        &mut sender,
        "PUT",
        "/v1/files?path=/workspace/note.txt",
        b"hello vm".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = request(
        &mut sender,
        "GET",
        "/v1/files?path=/workspace/note.txt",
        Vec::new(),
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"hello vm"[..]));
    let (status, _) = request(
        &mut sender,
        "PUT",
        "/v1/files?path=/etc/note.txt",
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 403, "the rootfs is mounted read-only");
    let (status, body) = request(
        &mut sender,
        "GET",
        "/v1/files?path=/etc/resolv.conf",
        Vec::new(),
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"nameserver 10.0.2.3\n"[..]));

    // A second host connection (the relay restarting) gets a fresh HTTP/2 session.
    drop(sender);
    session.abort();
    let _ = session.await;
    let (mut again, _session) = connect(&dir.path().join("serial.sock")).await;
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(60),
        request(&mut again, "GET", "/v1/health", Vec::new()),
    )
    .await
    .unwrap_or_else(|_| {
        let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
        panic!("no answer after reconnecting; console:\n{console}")
    });
    assert_eq!(status, 200);
    drop(vm);
}

/// The benchmark's reference: the same kernel straight to a trivial init (`hearth.baseline=1`
/// makes /init print one line and power off).
#[test]
#[ignore = "builds the guest image and boots QEMU; see the file header"]
fn the_baseline_initrd_boots_to_a_trivial_init_and_powers_off() {
    let image = build_image();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut vm = boot(
        &image,
        &image.baseline_initrd,
        dir.path(),
        &format!("{APPEND} hearth.baseline=1"),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "QEMU still running after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "baseline boot to power-off: {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{status}");
    let console = std::fs::read_to_string(&vm.console).unwrap();
    assert!(
        console.contains("hearth-guest: baseline ready"),
        "{console}"
    );
}
