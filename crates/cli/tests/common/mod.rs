//! Helpers shared by the CLI's process-level tests.

use std::process::Command;

/// `rewarddance serve` on ephemeral ports; returns the process and its gRPC URL once SERVING.
pub fn serve() -> (std::process::Child, String) {
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
        .env_remove("REWARDDANCE_MODEL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    for line in stderr.lines().map_while(Result::ok) {
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let message = v["message"]
            .as_str()
            .or(v["fields"]["message"].as_str())
            .unwrap_or("");
        if message == "listening" {
            addr = v["addr"]
                .as_str()
                .or(v["fields"]["addr"].as_str())
                .map(String::from);
        }
        if message.contains("SERVING") {
            break;
        }
    }
    let addr = addr.expect("the server logged its address");
    (child, format!("http://{addr}"))
}
