//! The real key goes to the upstream and nowhere else: not to the client, the records, any
//! `Debug` output or the logs. Neither does the task's gateway token.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{chat_body, Harness, REAL_KEY};
use hearth_gateway::scripted::Fixture;
use http::StatusCode;

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// The only test of this binary: it installs the global subscriber, so it sees every log line
// of every thread, hyper's and rustls's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_key_goes_upstream_and_nowhere_else() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let harness = Harness::start(Fixture::demo()).await;
    let token = harness.register("task-key", 100_000);
    let reply = harness.chat(&token, &chat_body(0)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "list_dir"
    );

    let seen = harness.scripted.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {REAL_KEY}"))
    );
    assert_eq!(
        seen[0].body,
        chat_body(0),
        "the body is forwarded unchanged"
    );

    let token_text = token.expose();
    let records = serde_json::to_string(&harness.recorder.calls()).unwrap();
    let debug = format!("{:?} {:?} {:?}", harness.gateway, token, harness.recorder);
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("model call"),
        "the call was logged: {logged}"
    );
    for (what, text) in [
        ("response", &reply.text),
        ("records", &records),
        ("debug", &debug),
        ("logs", &logged),
    ] {
        assert!(
            !text.contains(REAL_KEY),
            "the key leaked into the {what}: {text}"
        );
        assert!(
            !text.contains(&token_text),
            "the gateway token leaked into the {what}: {text}"
        );
    }
}
