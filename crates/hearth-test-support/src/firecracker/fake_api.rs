//! A local server that speaks Firecracker's API on a Unix socket, for tests on hosts where
//! Firecracker can't run. It checks every request against the spec (answering 400 with a
//! `fault_message` like Firecracker when one fails), keeps Firecracker's ordering rules
//! (pre-boot calls only before `InstanceStart`, `PATCH /vm` only after, snapshots only while
//! paused), records the sequence, and once started serves the vsock socket with Firecracker's
//! `CONNECT`/`OK` handshake (then echoes, standing in for the guest). Like Firecracker, a
//! snapshot records the drives' paths as the VMM named them, and a load reopens them there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::spec::Spec;

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
    pub status: u16,
}

/// What the fake should do besides following the rules.
#[derive(Debug, Default, Clone)]
pub struct Behaviour {
    /// Answer 400 with this fault message for this path.
    pub fail: HashMap<String, String>,
    /// Where the stand-in guest listens: vsock connections are joined to this Unix socket
    /// (a real `hearth-guest serve`) instead of echoed.
    pub guest: Option<PathBuf>,
    /// With `guest`: answer the guest's `POST /v1/vm/thaw` here, appending its body to this
    /// file, instead of passing it on. The stand-in guest runs on the host, where taking a
    /// restored VM's new hostname and address would change the host's.
    pub thaw_log: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    recorded: Vec<Recorded>,
    spec_errors: Vec<String>,
    started: bool,
    paused: bool,
    configured: Vec<String>,
    vsock_uds: Option<PathBuf>,
    logger: Option<PathBuf>,
    /// The drives' `path_on_host`, as the VMM named them (saved in a snapshot's state).
    drives: Vec<String>,
}

/// The fake VMM's API.
#[derive(Clone)]
pub struct FakeApi {
    spec: Arc<Spec>,
    behaviour: Arc<Behaviour>,
    state: Arc<Mutex<State>>,
    /// Called with each recorded request (the out-of-process fake appends them to a file).
    on_record: Arc<dyn Fn(&Recorded) + Send + Sync>,
    /// Stands in for the jailer's chroot: absolute paths in bodies are resolved under it.
    root: Option<PathBuf>,
}

impl FakeApi {
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            spec: Arc::new(Spec::load()),
            behaviour: Arc::new(behaviour),
            state: Arc::default(),
            on_record: Arc::new(|_| {}),
            root: None,
        }
    }

    /// Resolves the VMM's paths under `root`, as if chrooted there.
    pub fn chrooted(mut self, root: PathBuf) -> Self {
        self.root = Some(root);
        self
    }

    /// A path from a request body, as the fake opens it.
    pub fn resolve(&self, path: &str) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }

    pub fn on_record(mut self, f: impl Fn(&Recorded) + Send + Sync + 'static) -> Self {
        self.on_record = Arc::new(f);
        self
    }

    /// Binds `socket` and serves until the runtime stops.
    pub fn serve(&self, socket: &Path) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(socket).expect("bind the fake API socket");
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let api = api.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    pub fn spec_errors(&self) -> Vec<String> {
        self.state.lock().unwrap().spec_errors.clone()
    }

    /// Firecracker's logger file, once `PUT /logger` named it.
    pub fn logger(&self) -> Option<PathBuf> {
        self.state.lock().unwrap().logger.clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let bytes = req.into_body().collect().await.map(|b| b.to_bytes());
        let body = match bytes {
            Ok(b) if b.is_empty() => None,
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(v) => Some(v),
                Err(e) => {
                    return self.finish(&method, &path, None, fault(format!("bad JSON: {e}")))
                }
            },
            Err(e) => return self.finish(&method, &path, None, fault(format!("body: {e}"))),
        };
        let answer = self.answer(&method, &path, body.as_ref()).await;
        self.finish(&method, &path, body, answer)
    }

    fn finish(
        &self,
        method: &Method,
        path: &str,
        body: Option<Value>,
        (status, answer): (StatusCode, Option<Value>),
    ) -> Response<Full<Bytes>> {
        let recorded = Recorded {
            method: method.to_string(),
            path: path.to_owned(),
            body,
            status: status.as_u16(),
        };
        (self.on_record)(&recorded);
        self.state.lock().unwrap().recorded.push(recorded);
        let bytes = answer
            .map(|v| Bytes::from(v.to_string()))
            .unwrap_or_default();
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .unwrap()
    }

    async fn answer(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Option<Value>) {
        if let Err(err) = self.spec.check(method.as_str(), path, body) {
            self.state.lock().unwrap().spec_errors.push(err.clone());
            return fault(err);
        }
        if let Some(message) = self.behaviour.fail.get(path) {
            return fault(message.clone());
        }
        if *method == Method::GET && path == "/" {
            return (StatusCode::OK, Some(self.instance_info()));
        }
        let body = body.cloned().unwrap_or(Value::Null);
        let mut state = self.state.lock().unwrap();
        match (method.as_str(), path) {
            ("PUT", "/actions") => {
                if state.started {
                    return fault("The microVM is already running.");
                }
                if !state.configured.iter().any(|p| p == "/boot-source") {
                    return fault("Cannot start microvm without kernel configuration.");
                }
                state.started = true;
                if let Some(uds) = state.vsock_uds.clone() {
                    serve_vsock(&self.resolve(&uds.to_string_lossy()), &self.behaviour);
                }
            }
            ("PATCH", "/vm") => {
                if !state.started {
                    return fault(
                        "The requested operation is not supported before starting the microVM.",
                    );
                }
                state.paused = body["state"] == "Paused";
            }
            ("PUT", "/snapshot/create") => {
                if !state.paused {
                    return fault("Create snapshot: the microVM must be paused.");
                }
                // The state names the drives as the VMM saw them; the memory is a stand-in.
                let contents = [
                    (
                        "snapshot_path",
                        json!({ "drives": state.drives }).to_string(),
                    ),
                    ("mem_file_path", "memory".to_owned()),
                ];
                for (key, contents) in contents {
                    let file = self.resolve(body[key].as_str().unwrap_or_default());
                    if let Err(e) = std::fs::write(&file, contents) {
                        return fault(format!("Cannot create {}: {e}", file.display()));
                    }
                }
            }
            ("PUT", "/snapshot/load") => {
                let others = state
                    .configured
                    .iter()
                    .any(|p| p != "/logger" && p != "/metrics");
                if state.started || others {
                    return fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
                }
                state.started = true;
                state.paused = body["resume_vm"] != true;
                for key in ["snapshot_path", "mem_backend"] {
                    let file = match key {
                        "mem_backend" => &body[key]["backend_path"],
                        _ => &body[key],
                    };
                    let file = self.resolve(file.as_str().unwrap_or_default());
                    if !file.exists() {
                        return fault(format!("Cannot open {}", file.display()));
                    }
                }
                let state_file = self.resolve(body["snapshot_path"].as_str().unwrap_or_default());
                let saved: Value = std::fs::read(&state_file)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default();
                let Some(drives) = saved["drives"].as_array() else {
                    return fault(format!("{} is not a snapshot", state_file.display()));
                };
                let drives: Vec<String> = drives
                    .iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect();
                for drive in &drives {
                    if !self.resolve(drive).exists() {
                        return fault(format!(
                            "Load snapshot error: Cannot restore devices: Block(BackingFile(Os {{ code: 2, kind: NotFound }}, \"{drive}\"))"
                        ));
                    }
                }
                state.drives = drives;
                if let Some(uds) = body["vsock_override"]["uds_path"].as_str() {
                    serve_vsock(&self.resolve(uds), &self.behaviour);
                }
            }
            ("PUT", pre_boot) => {
                if state.started {
                    return fault(
                        "The requested operation is not supported after starting the microVM.",
                    );
                }
                // Firecracker opens these files when they are configured, and creates none.
                let opened = match pre_boot {
                    "/logger" => vec![&body["log_path"]],
                    "/metrics" => vec![&body["metrics_path"]],
                    "/boot-source" => vec![&body["kernel_image_path"], &body["initrd_path"]],
                    p if p.starts_with("/drives/") => vec![&body["path_on_host"]],
                    _ => vec![],
                };
                for file in opened.into_iter().filter_map(Value::as_str) {
                    let file = self.resolve(file);
                    if !file.exists() {
                        return fault(format!("Cannot open {}: no such file", file.display()));
                    }
                    if pre_boot == "/logger" {
                        state.logger = Some(file);
                    }
                }
                if let Some(drive) = pre_boot
                    .starts_with("/drives/")
                    .then(|| body["path_on_host"].as_str())
                    .flatten()
                {
                    state.drives.push(drive.to_owned());
                }
                if pre_boot == "/vsock" {
                    state.vsock_uds = body["uds_path"].as_str().map(PathBuf::from);
                }
                state.configured.push(pre_boot.to_owned());
            }
            _ => {
                return fault(format!(
                    "Invalid request method and/or path: {method} {path}."
                ))
            }
        }
        (StatusCode::NO_CONTENT, None)
    }

    fn instance_info(&self) -> Value {
        let state = self.state.lock().unwrap();
        let status = match (state.started, state.paused) {
            (false, _) => "Not started",
            (true, false) => "Running",
            (true, true) => "Paused",
        };
        json!({"app_name": "Firecracker", "id": "anonymous-instance", "state": status, "vmm_version": "1.17.0-dev"})
    }
}

fn fault(message: impl Into<String>) -> (StatusCode, Option<Value>) {
    (
        StatusCode::BAD_REQUEST,
        Some(json!({ "fault_message": message.into() })),
    )
}

/// Firecracker's host side of vsock: `CONNECT <port>\n`, `OK <port>\n` for port 1024 (where
/// hearth-guest listens), a closed connection for any other; then echo, like a guest would
/// answer what it is sent, or join the stream to `guest` (answering a thaw itself when
/// `thaw_log` is set).
fn serve_vsock(uds: &Path, behaviour: &Behaviour) {
    let listener = UnixListener::bind(uds).expect("bind the fake vsock socket");
    let (guest, thaw_log) = (behaviour.guest.clone(), behaviour.thaw_log.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (guest, thaw_log) = (guest.clone(), thaw_log.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let mut line = String::new();
                if read.read_line(&mut line).await.is_err() || line != "CONNECT 1024\n" {
                    return;
                }
                if let Some(guest) = guest {
                    // Like Firecracker: no listener in the guest, no OK.
                    let Ok(upstream) = tokio::net::UnixStream::connect(&guest).await else {
                        return;
                    };
                    if write.write_all(b"OK 1073741824\n").await.is_err() {
                        return;
                    }
                    let mut request_line = String::new();
                    if read.read_line(&mut request_line).await.is_err() {
                        return;
                    }
                    let thaw = format!("POST {} ", hearth_proto::vm::VM_THAW_PATH);
                    if let (Some(log), true) = (&thaw_log, request_line.starts_with(&thaw)) {
                        answer_thaw(&mut read, &mut write, log).await;
                        return;
                    }
                    let (mut up_read, mut up_write) = upstream.into_split();
                    let to_guest = async {
                        if up_write.write_all(request_line.as_bytes()).await.is_ok() {
                            let _ = tokio::io::copy_buf(&mut read, &mut up_write).await;
                        }
                        let _ = up_write.shutdown().await;
                    };
                    let from_guest = async {
                        let _ = tokio::io::copy(&mut up_read, &mut write).await;
                        let _ = write.shutdown().await;
                    };
                    tokio::join!(to_guest, from_guest);
                    return;
                }
                if write.write_all(b"OK 1073741824\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 || write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Reads the rest of a thaw request (headers, then a `content-length` body), appends the body
/// as one line to `log` and answers 200 `{}`, as the guest does.
async fn answer_thaw(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    log: &Path,
) {
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if read.read_line(&mut header).await.unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    if read.read_exact(&mut body).await.is_err() {
        return;
    }
    body.push(b'\n');
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the thaw log");
        file.write_all(&body).expect("append to the thaw log");
    }
    let _ = write
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        )
        .await;
    let _ = write.shutdown().await;
}
