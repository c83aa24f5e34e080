//! `rewarddance score --manifest --server` ends its `ScoreStream` the way gRPC defines a clean
//! end (the client half-closes, the server answers everything and sends status OK), so the
//! server's own per-RPC counter, which the shipped error-rate alert reads, counts it as `Ok`.

mod common;

use std::time::{Duration, Instant};

use common::{fixture, run_score as run, scrape, serve_with_metrics};

/// `(code, count)` of every `rewarddance_requests_total` sample with `method="ScoreStream"`.
fn score_stream_counts(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with("rewarddance_requests_total{"))
        .filter(|l| l.contains(r#"method="ScoreStream""#))
        .map(|l| {
            let code = l
                .split(r#"code=""#)
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?")
                .to_string();
            let count = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (code, count)
        })
        // Series registered at start-up sit at zero until a call ends with that code.
        .filter(|(_, count)| *count != 0.0)
        .collect()
}

#[test]
fn a_completed_manifest_run_is_counted_ok_by_the_server() {
    let dir = std::env::temp_dir().join(format!("rd-stream-ok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<String> = ["fox_100x60.png", "gray_64x64.png", "nope.png"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                r#"{{"id":"r{i}","prompt":"p","image":"{}"}}"#,
                fixture(name)
            )
        })
        .collect();
    let manifest = dir.join("rows.jsonl");
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let out = dir.join("out.jsonl");

    let (mut server, url, metrics) = serve_with_metrics();
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--server",
        &url,
        "--batch-size",
        "1",
    ]);
    // The server counts the stream when it ends on its side; an aborted connection is noticed a
    // moment after the client exits, so wait for the count rather than read it once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts = score_stream_counts(&scrape(&metrics));
        if !counts.is_empty() || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    // The label is gRPC's canonical code name, as the shipped alert and dashboard match it
    // (`code=~"INTERNAL|UNKNOWN|..."`, `code!="OK"`).
    assert_eq!(
        counts,
        vec![("OK".to_string(), 1.0)],
        "ScoreStream samples of rewarddance_requests_total"
    );
    std::fs::remove_dir_all(&dir).ok();
}
