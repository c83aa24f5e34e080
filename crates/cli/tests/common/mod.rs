//! Helpers shared by the CLI's process-level tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;

/// Path of a committed fixture image.
pub fn fixture(name: &str) -> String {
    format!(
        "{}/../../fixtures/images/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `rewarddance score ARGS` on the bundled model: (exit code, stdout, stderr).
pub fn run_score(args: &[&str]) -> (i32, String, String) {
    run("score", args)
}

/// Runs `rewarddance SUBCOMMAND ARGS` with no model or template from the environment:
/// (exit code, stdout, stderr).
pub fn run(subcommand: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .arg(subcommand)
        .args(args)
        .env_remove("REWARDDANCE_MODEL")
        .env_remove("REWARDDANCE_TEMPLATE")
        .output()
        .expect("run rewarddance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rewarddance serve` on ephemeral ports; returns the process and its gRPC URL once SERVING.
pub fn serve() -> (std::process::Child, String) {
    let (child, url, _) = serve_with_metrics();
    (child, url)
}

/// Like [`serve`], and also the `host:port` of the server's `/metrics` endpoint.
pub fn serve_with_metrics() -> (std::process::Child, String, String) {
    serve_with(&[])
}

/// [`serve_with_metrics`] with more `serve` flags (`--model`, `--rewards`, ...).
pub fn serve_with(extra: &[&str]) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(extra)
        .env_remove("REWARDDANCE_MODEL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut addr, mut metrics) = (None, None);
    for line in stderr.by_ref().map_while(Result::ok) {
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let message = v["message"]
            .as_str()
            .or(v["fields"]["message"].as_str())
            .unwrap_or("");
        let field = |name: &str| {
            v[name]
                .as_str()
                .or(v["fields"][name].as_str())
                .map(String::from)
        };
        if message == "listening" {
            addr = field("addr");
        }
        if message.starts_with("metrics on") {
            metrics = field("addr");
        }
        if message.contains("SERVING") {
            break;
        }
    }
    // Keep reading the server's log: a closed pipe must not be what ends or slows it.
    std::thread::spawn(move || for _ in stderr.map_while(Result::ok) {});
    let addr = addr.expect("the server logged its address");
    let metrics = metrics.expect("the server logged its metrics address");
    (child, format!("http://{addr}"), metrics)
}

/// The Prometheus text of `GET http://ADDR/metrics` (plain HTTP/1.1, as a scraper sends it).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send scrape");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A fresh scratch directory for one test (`kind` and `tag` name it; removed first if left over).
pub fn scratch_dir(kind: &str, tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rd-{kind}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The JSON lines of an output file.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
