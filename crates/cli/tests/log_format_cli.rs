//! `--log-format json` makes every stderr line of `serve` a JSON object (issue #14: the memory
//! check and the random-weights note were plain text), and the notes keep their facts as
//! fields.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

/// Runs `serve` with `model_args`, reads its stderr until SERVING (or the end), kills it and
/// returns the lines.
fn serve_lines(model_args: &[&str]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--no-metrics",
            "--log-format",
            "json",
        ])
        .args(model_args)
        .env_remove("REWARDDANCE_MODEL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut lines = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let done = line.contains("SERVING");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

fn parse_all(lines: &[String]) -> Vec<serde_json::Value> {
    assert!(!lines.is_empty());
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_serve_line_is_json_and_notes_carry_fields() {
    let lines = parse_all(&serve_lines(&[]));
    let memory = lines
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("memory check"))
        })
        .expect("a memory-check line");
    assert_eq!(memory["device"], "cpu");
    assert!(
        memory["needs"].is_string() && memory["available_gib"].is_string(),
        "{memory}"
    );
    let random = lines
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("RANDOM weights"))
        })
        .expect("the bundled model's random-weights note");
    assert_eq!(random["model"], "bundled:tiny-internvl-random");
}

#[test]
fn a_random_preset_says_its_weights_are_random() {
    let (code, _, stderr) = common::run_score(&[
        "--model",
        "random:mini",
        "--image",
        &common::fixture("fox_100x60.png"),
        "--prompt",
        "a fox",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("random:mini") && stderr.contains("RANDOM weights"),
        "{stderr}"
    );
}

#[test]
fn a_start_up_error_under_json_logging_is_a_json_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--no-metrics",
            "--log-format",
            "json",
        ])
        .args(["--model", "/nonexistent/checkpoint"])
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let values = parse_all(&text.lines().map(String::from).collect::<Vec<_>>());
    assert!(
        values
            .iter()
            .any(|v| v["level"] == "ERROR" && v["error"].is_string()),
        "{text}"
    );
}
