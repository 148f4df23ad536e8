//! The relay driven by the real `GuestClient`, with an in-process HTTP/2 server on a Unix
//! socket standing in for hearth-guest behind QEMU's virtio-serial chardev.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hearth_proto::{ExecEvent, ExecRequest, ExitStatus, Health, WriteResult};
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::guest_client::{GuestClient, GuestClientError, OutputChunk};

type Files = Arc<std::sync::Mutex<HashMap<String, Vec<u8>>>>;
type GuestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A fake guest: serves HTTP/2 only, one connection at a time, like a virtio-serial port.
struct FakeGuest {
    task: JoinHandle<()>,
    /// How many h2 connections it has accepted.
    connections: Arc<AtomicUsize>,
}

impl FakeGuest {
    fn start(path: &Path, files: Files) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let files = Arc::clone(&files);
                let service = service_fn(move |req| guest_handler(req, Arc::clone(&files)));
                // One connection at a time, as a chardev socket accepts.
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        Self { task, connections }
    }

    /// Kills the guest: the listener and its live connection go away.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn json(value: &impl serde::Serialize) -> Response<GuestBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap()));
    Response::new(body.boxed())
}

async fn guest_handler(
    req: Request<Incoming>,
    files: Files,
) -> Result<Response<GuestBody>, Infallible> {
    assert_eq!(req.version(), Version::HTTP_2);
    let path_query = req.uri().path_and_query().unwrap().as_str().to_owned();
    let file_path = path_query
        .split_once("?path=")
        .map(|(_, rest)| rest.split('&').next().unwrap().replace("%2F", "/"));
    let resp = match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/v1/health") => json(&Health {
            status: "ok".into(),
            pid: 1,
            uptime_ms: 5,
            running: 0,
        }),
        (Method::POST, "/v1/exec") => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let exec: ExecRequest = serde_json::from_slice(&body).unwrap();
            exec_stream(exec)
        }
        (Method::PUT, "/v1/files") => {
            let data = req.into_body().collect().await.unwrap().to_bytes();
            let path = file_path.unwrap();
            let size = data.len() as u64;
            files.lock().unwrap().insert(path.clone(), data.to_vec());
            json(&WriteResult { path, size })
        }
        (Method::GET, "/v1/files") => {
            let data = files.lock().unwrap().get(&file_path.unwrap()).cloned();
            match data {
                Some(data) => Response::new(Full::new(Bytes::from(data)).boxed()),
                None => {
                    let mut resp = json(&ErrorBody::new(ErrorKind::NotFound, "no such file"));
                    *resp.status_mut() = StatusCode::NOT_FOUND;
                    resp
                }
            }
        }
        _ => {
            let mut resp = json(&ErrorBody::new(ErrorKind::UnknownEndpoint, "?"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    };
    Ok(resp)
}

/// Echoes each argv word as one stdout event, a little apart, so the client sees a stream.
fn exec_stream(exec: ExecRequest) -> Response<GuestBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let mut events = vec![ExecEvent::Started { pid: 42 }];
        for word in &exec.argv {
            events.push(ExecEvent::Stdout {
                data: word.clone().into_bytes(),
            });
        }
        events.push(ExecEvent::Exit(ExitStatus {
            code: Some(3),
            signal: None,
            timed_out: false,
            oom_killed: false,
        }));
        for event in events {
            let mut line = serde_json::to_vec(&event).unwrap();
            line.push(b'\n');
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    Response::new(StreamBody::new(stream).boxed())
}

struct Relay {
    client: GuestClient,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    fn start(dir: &Path, upstream: Upstream) -> Self {
        let socket = dir.join("guest.sock");
        let listener = bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, upstream, async move {
            let _ = stopped.await;
        }));
        Self {
            client: GuestClient::new(socket),
            stop: Some(stop),
            task,
        }
    }

    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}
fn mux(path: &Path) -> Upstream {
    Upstream::Http2Mux {
        socket: path.to_owned(),
    }
}

async fn exec_echo(client: &GuestClient, words: &[&str]) -> (Vec<Vec<u8>>, ExitStatus) {
    let req = ExecRequest {
        argv: words.iter().map(|w| (*w).to_owned()).collect(),
        ..serde_json::from_str("{\"argv\":[]}").unwrap()
    };
    let mut chunks = Vec::new();
    let status = client
        .exec(&req, |chunk| match chunk {
            OutputChunk::Stdout(data) => chunks.push(data),
            other => panic!("unexpected {other:?}"),
        })
        .await
        .unwrap();
    (chunks, status)
}

#[tokio::test]
async fn health_exec_and_files_pass_through_one_h2_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("guest-serial.sock");
    let guest = FakeGuest::start(&serial, Files::default());
    let relay = Relay::start(tmp.path(), mux(&serial));

    let mode = std::fs::metadata(relay.client.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    assert_eq!(relay.client.health().await.unwrap().status, "ok");
    let (chunks, status) = exec_echo(&relay.client, &["one", "two", "three"]).await;
    assert_eq!(
        chunks,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    assert_eq!(status.code, Some(3));

    let data = vec![7u8; 300_000];
    let written = relay
        .client
        .write_file("/workspace/a.bin", data.clone(), 0o644)
        .await
        .unwrap();
    assert_eq!(written.size, 300_000);
    assert_eq!(
        relay.client.read_file("/workspace/a.bin").await.unwrap(),
        data
    );
    // The guest's own errors come through unchanged.
    let err = relay.client.read_file("/nope").await.unwrap_err();
    assert_eq!(err.guest_kind(), Some(ErrorKind::NotFound));
    // Many local HTTP/1.1 connections, one h2 connection upstream.
    assert_eq!(guest.connections.load(Ordering::SeqCst), 1);

    relay.shut_down().await;
    guest.stop().await;
}

#[tokio::test]
async fn concurrent_clients_share_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("guest-serial.sock");
    let guest = FakeGuest::start(&serial, Files::default());
    let relay = Relay::start(tmp.path(), mux(&serial));

    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let client = relay.client.clone();
        tasks.spawn(async move {
            let word = format!("w{i}");
            let (chunks, status) = exec_echo(&client, &[&word, "end"]).await;
            assert_eq!(chunks, vec![word.into_bytes(), b"end".to_vec()]);
            assert_eq!(status.code, Some(3));
            let path = format!("/f{i}");
            client
                .write_file(&path, vec![i; 1000], 0o600)
                .await
                .unwrap();
            assert_eq!(client.read_file(&path).await.unwrap(), vec![i; 1000]);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(guest.connections.load(Ordering::SeqCst), 1);
    relay.shut_down().await;
    guest.stop().await;
}

#[tokio::test]
async fn unreachable_guest_gets_a_502_error_body_then_reconnects_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("guest-serial.sock");
    let files = Files::default();
    let relay = Relay::start(tmp.path(), mux(&serial));

    // Nothing listens yet (a VM still booting).
    match relay.client.health().await.unwrap_err() {
        GuestClientError::Guest {
            status,
            kind,
            message,
        } => {
            assert_eq!(status, 502);
            assert_eq!(kind, ErrorKind::Io);
            assert!(message.contains("unreachable"), "{message}");
            assert!(message.contains("guest-serial.sock"), "{message}");
        }
        other => panic!("expected a 502 error body, got {other:?}"),
    }

    let guest = FakeGuest::start(&serial, Arc::clone(&files));
    relay
        .client
        .write_file("/kept", &b"x"[..], 0o600)
        .await
        .unwrap();
    assert_eq!(guest.connections.load(Ordering::SeqCst), 1);

    // The guest goes away: requests fail cleanly, then succeed on a new connection once it
    // is back.
    guest.stop().await;
    let err = relay.client.health().await.unwrap_err();
    assert!(
        matches!(err, GuestClientError::Guest { status: 502, .. }),
        "{err:?}"
    );
    let guest = FakeGuest::start(&serial, Arc::clone(&files));
    assert_eq!(relay.client.read_file("/kept").await.unwrap(), b"x");
    assert_eq!(relay.client.health().await.unwrap().status, "ok");
    assert_eq!(guest.connections.load(Ordering::SeqCst), 1);

    relay.shut_down().await;
    guest.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_guest_restarts_without_a_failed_request_between() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("guest-serial.sock");
    let relay = Relay::start(tmp.path(), mux(&serial));
    let guest = FakeGuest::start(&serial, Files::default());
    relay.client.health().await.unwrap();
    guest.stop().await;
    let guest = FakeGuest::start(&serial, Files::default());
    // The old connection is dead, maybe not yet noticed: the request must still succeed.
    assert_eq!(relay.client.health().await.unwrap().status, "ok");
    assert_eq!(guest.connections.load(Ordering::SeqCst), 1);
    relay.shut_down().await;
    guest.stop().await;
}

/// Connects to a plain HTTP/1.1 server standing in for a vsock stream.
#[derive(Debug)]
struct UdsConnector {
    path: PathBuf,
    connects: AtomicUsize,
}

impl GuestConnector for UdsConnector {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<UnixStream>> + Send + '_>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        Box::pin(UnixStream::connect(&self.path))
    }
}

#[tokio::test]
async fn per_connection_upstream_copies_bytes_and_reports_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream_path = tmp.path().join("vsock.sock");
    let connector = Arc::new(UdsConnector {
        path: upstream_path.clone(),
        connects: AtomicUsize::new(0),
    });
    let relay = Relay::start(tmp.path(), Upstream::PerConnection(connector.clone()));

    let err = relay.client.health().await.unwrap_err();
    assert!(
        matches!(&err, GuestClientError::Guest { status: 502, message, .. } if message.contains("vsock.sock")),
        "{err:?}"
    );

    let listener = UnixListener::bind(&upstream_path).unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(json(&Health {
                        status: "ok".into(),
                        pid: 7,
                        uptime_ms: 1,
                        running: 0,
                    }))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    for _ in 0..3 {
        assert_eq!(relay.client.health().await.unwrap().pid, 7);
    }
    // One upstream stream per local connection (plus the failed one).
    assert_eq!(connector.connects.load(Ordering::SeqCst), 4);
    relay.shut_down().await;
    server.abort();
}

#[tokio::test]
async fn a_connected_but_silent_guest_gets_a_502_then_works_once_it_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("guest-serial.sock");
    // Like QEMU's chardev before the guest opens its port: connections are accepted, and
    // nothing is ever read or answered.
    let listener = UnixListener::bind(&serial).unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let relay = Relay::start(tmp.path(), mux(&serial));
    match relay.client.health().await.unwrap_err() {
        GuestClientError::Guest {
            status: 502,
            message,
            ..
        } => assert!(message.contains("did not answer"), "{message}"),
        other => panic!("expected a 502, got {other:?}"),
    }
    silent.abort();
    let _ = silent.await;

    let guest = FakeGuest::start(&serial, Files::default());
    assert_eq!(relay.client.health().await.unwrap().status, "ok");
    relay.shut_down().await;
    guest.stop().await;
}
