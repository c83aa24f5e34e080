//! `rewarddance rank`: in-process and on a server (Rank RPC) give the same ranking.

mod common;

use std::process::Command;

fn rank(extra: &[&str]) -> serde_json::Value {
    let images: Vec<String> = [
        "fox_100x60.png",
        "square_130x130.png",
        "gray_64x64.png",
        "tall_30x220.png",
    ]
    .iter()
    .map(|n| format!("{}/../../fixtures/images/{n}", env!("CARGO_MANIFEST_DIR")))
    .collect();
    let mut args = vec!["rank", "--prompt", "a fox in the snow"];
    for i in &images {
        args.extend(["--image", i.as_str()]);
    }
    args.extend(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args(&args)
        .env_remove("REWARDDANCE_MODEL")
        .env_remove("REWARDDANCE_SERVER")
        .output()
        .expect("run rank");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn in_process_and_server_rankings_agree() {
    let local = rank(&[]);
    assert_eq!(local["comparisons"], 12);
    let (mut server, url) = common::serve();
    let remote = rank(&["--server", &url]);
    let pointwise = rank(&["--server", &url, "--pointwise"]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(local["order"], remote["order"]);
    assert_eq!(local["best"], remote["best"]);
    for (l, r) in local["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .zip(remote["candidates"].as_array().unwrap())
    {
        assert_eq!(l["wins"], r["wins"]);
        let (a, b) = (
            l["strength"].as_f64().unwrap(),
            r["strength"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let local_pointwise = rank(&["--pointwise"]);
    assert_eq!(local_pointwise["order"], pointwise["order"]);
}
