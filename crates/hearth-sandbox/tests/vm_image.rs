//! Builds the guest image and boots it under QEMU TCG: hearth-guest must come up as PID 1 and
//! answer health, exec and file requests over HTTP/2 on the virtio-serial port.
//!
//! Ignored by default (it downloads Debian packages once and boots a VM). Run it with
//! `HEARTH_GUEST_STATIC=<static hearth-guest> cargo test -p hearth-sandbox --test vm_image -- --ignored --nocapture`
//! (build the binary with `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
//! -p hearth-guest --target x86_64-unknown-linux-gnu`). Images are cached in
//! `HEARTH_TEST_IMAGES_DIR` (default: cargo's target tmpdir), so later runs only boot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_proto::{ExecEvent, ExecRequest, Health, GUEST_SERIAL_PORT_NAME};
use hearth_sandbox::image::{GuestImage, ImageBuilder};
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

fn boot(image: &GuestImage, initrd: &Path, dir: &Path, append: &str) -> Vm {
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
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    Vm { child, console }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(socket: &Path) -> Sender {
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
    tokio::spawn(conn);
    sender
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds the guest image and boots QEMU; see the file header"]
async fn the_image_boots_to_hearth_guest_over_virtio_serial() {
    let image = build_image();
    let dir = tempfile::tempdir().unwrap();
    let append = format!(
        "{APPEND} hearth.transport=virtio-serial:{GUEST_SERIAL_PORT_NAME} hearth.root=/dev/vda"
    );
    let started = Instant::now();
    let vm = boot(&image, &image.initrd, dir.path(), &append);
    let mut sender = connect(&dir.path().join("serial.sock")).await;
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

    let exec = ExecRequest {
        argv: [
            "python3",
            "-c",
            "import os; print(1+1, os.getuid(), open('/proc/1/comm').read().strip())",
        ]
        .map(String::from)
        .to_vec(),
        ..ExecRequest::default()
    };
    let (status, body) = request(
        &mut sender,
        "POST",
        "/v1/exec",
        serde_json::to_vec(&exec).unwrap(),
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
    assert_eq!(String::from_utf8_lossy(&stdout), "2 0 init\n", "{events:?}");
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit(st)) if st.success()),
        "{events:?}"
    );

    // The workspace is writable, the root is not.
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
