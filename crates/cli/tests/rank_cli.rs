//! `rewarddance rank`: in-process and on a server (Rank RPC) give the same ranking; a table for
//! people by default, JSON with `--json`; a candidate that cannot be read or decoded is its own
//! error and makes the exit code 1.

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
    let mut args = vec!["rank", "--json", "--prompt", "a fox in the snow"];
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

fn image(name: &str) -> String {
    format!(
        "{}/../../fixtures/images/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `rewarddance rank ARGS`: (exit code, stdout, stderr).
fn run_rank(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .arg("rank")
        .args(args)
        .env_remove("REWARDDANCE_MODEL")
        .env_remove("REWARDDANCE_SERVER")
        .output()
        .expect("run rank");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_default_output_is_a_table_that_names_the_files() {
    let (fox, gray) = (image("fox_100x60.png"), image("gray_64x64.png"));
    let (code, stdout, stderr) = run_rank(&["--prompt", "p", "--image", &fox, "--image", &gray]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&stdout).is_err(),
        "{stdout}"
    );
    assert!(stdout.contains("fox_100x60.png") && stdout.contains("gray_64x64.png"));
    assert!(stdout.contains("best"), "{stdout}");
    // Compact: a header, one line per candidate and the best, not a JSON dump of matrices.
    assert!(stdout.lines().count() <= 6, "{stdout}");
    for line in stdout.lines() {
        assert!(line.len() <= 100, "{line:?}");
    }
}

#[test]
fn a_missing_or_broken_candidate_is_its_own_error_and_the_exit_code_is_1() {
    let dir = std::env::temp_dir().join(format!("rd-rank-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"not a png").unwrap();
    let missing = dir.join("missing.png");
    let (fox, gray) = (image("fox_100x60.png"), image("gray_64x64.png"));
    let (mut server, url) = common::serve();
    let mut outputs = Vec::new();
    for extra in [&[][..], &["--server", url.as_str()][..]] {
        let mut args = vec!["--json", "--prompt", "p"];
        for i in [
            fox.as_str(),
            missing.to_str().unwrap(),
            gray.as_str(),
            corrupt.to_str().unwrap(),
        ] {
            args.extend(["--image", i]);
        }
        args.extend(extra);
        outputs.push(run_rank(&args));
    }
    let _ = server.kill();
    let _ = server.wait();
    std::fs::remove_dir_all(&dir).ok();
    for (code, stdout, stderr) in outputs {
        assert_eq!(code, 1, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
        let c = &v["candidates"];
        assert!(c[0]["error"].is_null() && c[2]["error"].is_null(), "{v}");
        assert!(
            c[1]["error"].as_str().unwrap().contains("missing.png"),
            "{v}"
        );
        assert_eq!(c[1]["reason"], "unreadable_file", "{v}");
        assert_eq!(c[3]["reason"], "invalid_image", "{v}");
        assert_eq!(v["comparisons"], 2, "{v}");
    }
}
