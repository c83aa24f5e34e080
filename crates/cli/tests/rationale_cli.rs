//! `rewarddance score --rationale`: single items (streamed to stderr) and batch evaluation
//! in-process and on a server, which must agree (greedy decoding is deterministic).

mod common;

use std::path::PathBuf;

use common::{fixture, run_score as run, serve};

fn rows(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn a_single_item_rationale_is_deterministic_and_streamed_to_stderr() {
    let fox = fixture("fox_100x60.png");
    let args = [
        "--json",
        "--prompt",
        "a red fox",
        "--image",
        &fox,
        "--rationale",
        "--max-tokens",
        "6",
        "--stream",
    ];
    let (code, out, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    let row = &rows(&out)[0];
    let r = &row["rationale"];
    let tokens = r["tokens"].as_u64().expect("tokens");
    assert!((1..=6).contains(&tokens), "{row}");
    assert!(["end_of_turn", "max_tokens"].contains(&r["stop"].as_str().unwrap()));
    let text = r["text"].as_str().unwrap();
    assert!(
        stderr.contains(text),
        "streamed text {text:?} not in {stderr}"
    );
    let (_, again, _) = run(&args);
    assert_eq!(rows(&again)[0]["rationale"], *r, "greedy is deterministic");
    let (code, _, stderr) = run(&[
        "--prompt",
        "p",
        "--image",
        &fox,
        "--rationale",
        "--top-p",
        "1.5",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--top-p"), "{stderr}");
}

#[test]
fn batch_rationales_agree_in_process_and_on_a_server() {
    let dir = std::env::temp_dir().join(format!("rd-rationale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("rows.jsonl");
    let lines: Vec<String> = ["fox_100x60.png", "gray_64x64.png", "nope.png"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                r#"{{"id":"r{i}","prompt":"p{i}","image":"{}"}}"#,
                fixture(name)
            )
        })
        .collect();
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = |name: &str| -> PathBuf { dir.join(name) };
    let common = [
        "--manifest",
        manifest.to_str().unwrap(),
        "--rationale",
        "--max-tokens",
        "5",
    ];
    let local_out = out("local.jsonl");
    let (code, _, stderr) =
        run(&[&common[..], &["--output", local_out.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{stderr}");
    let (mut server, url) = serve();
    let remote_out = out("remote.jsonl");
    let (code, _, stderr) = run(&[
        &common[..],
        &[
            "--output",
            remote_out.to_str().unwrap(),
            "--server",
            &url,
            "--batch-size",
            "2",
        ],
    ]
    .concat());
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0, "{stderr}");
    let read = |p: &PathBuf| rows(&std::fs::read_to_string(p).unwrap());
    let (local, remote) = (read(&local_out), read(&remote_out));
    assert_eq!(local.len(), 3);
    for (l, r) in local.iter().zip(&remote) {
        if l["error"].is_string() {
            assert!(r["error"].is_string() && r["rationale"].is_null());
            continue;
        }
        assert_eq!(l["rationale"]["text"], r["rationale"]["text"], "{l} vs {r}");
        assert_eq!(l["rationale"]["tokens"], r["rationale"]["tokens"]);
        assert_eq!(l["rationale"]["stop"], r["rationale"]["stop"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}
