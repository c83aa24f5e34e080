//! One INFO line per call, with its fields as JSON fields (issue #14: method, peer, items,
//! status code, duration, request id).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_logs_one_json_line_with_its_fields() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .init();
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut client = server.client().await;
    let mut call = tonic::Request::new(request(vec![item("a", "a cat", 1), item("b", "a dog", 2)]));
    call.metadata_mut()
        .insert("x-request-id", "trainer-7-step-42".parse().expect("header"));
    client.score(call).await.expect("score");
    let mut bad = tonic::Request::new(request(Vec::new()));
    bad.metadata_mut()
        .insert("x-request-id", "empty-one".parse().expect("header"));
    client.score(bad).await.expect_err("no items");
    server.shutdown().await;

    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let call_line = |id: &str| {
        let found: Vec<_> = lines
            .iter()
            .filter(|l| l["message"] == "call" && l["request_id"] == id)
            .collect();
        assert_eq!(found.len(), 1, "one line for {id}:\n{text}");
        found[0].clone()
    };
    let ok = call_line("trainer-7-step-42");
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["method"], "Score");
    assert_eq!(ok["code"], "OK");
    assert_eq!(ok["items"], 2);
    assert!(ok["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{ok}");
    assert!(
        ok["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{ok}"
    );
    let bad = call_line("empty-one");
    assert_eq!(bad["code"], "INVALID_ARGUMENT");
}
