//! `rewarddance score` as a user runs it: the bundled model, JSON out, per-item errors.

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn score(args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .arg("score")
        .args(args)
        .env_remove("REWARDDANCE_MODEL")
        .output()
        .expect("run rewarddance");
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn scores_with_the_bundled_model_and_says_its_weights_are_random() {
    let fox = repo("fixtures/images/fox_100x60.png");
    let (code, lines, stderr) = score(&[
        "--json",
        "--explain",
        "--prompt",
        "a red fox",
        "--image",
        &fox,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("RANDOM weights"), "{stderr}");
    let item = &lines[0];
    let p = item["p_yes"].as_f64().expect("p_yes");
    assert!((0.0..=1.0).contains(&p));
    for key in ["p_yes_vocab", "logit_yes", "logit_no"] {
        assert!(item[key].is_number(), "{key} in {item}");
    }
    let explain = &item["explain"];
    assert!(explain["rendered_prompt"]
        .as_str()
        .unwrap()
        .contains("a red fox"));
    assert_eq!(explain["images"][0]["grid"], serde_json::json!([3, 2]));
    assert_eq!(
        explain["input_ids"].as_array().unwrap().len(),
        explain["num_tokens"].as_u64().unwrap() as usize
    );
}

#[test]
fn a_bad_image_is_reported_per_item_and_sets_the_exit_code() {
    let fox = repo("fixtures/images/fox_100x60.png");
    let bad = std::env::temp_dir().join(format!("rd-bad-{}.png", std::process::id()));
    std::fs::write(&bad, b"not a png").unwrap();
    let (code, lines, _) = score(&[
        "--json",
        "--prompt",
        "x",
        "--image",
        &fox,
        "--image",
        bad.to_str().unwrap(),
    ]);
    std::fs::remove_file(&bad).ok();
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["p_yes"].is_number());
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("invalid image"),
        "{}",
        lines[1]
    );
}

#[test]
fn pairwise_and_video_items() {
    let (a, b) = (
        repo("fixtures/images/square_130x130.png"),
        repo("fixtures/images/fox_100x60.png"),
    );
    let (code, lines, stderr) = score(&[
        "--json",
        "--explain",
        "--prompt",
        "p",
        "--image",
        &b,
        "--reference",
        &a,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(lines[0]["explain"]["rendered_prompt"]
        .as_str()
        .unwrap()
        .contains("Image 2: <image>"));
    let frames: Vec<String> = (1..=3)
        .map(|k| repo(&format!("fixtures/images/frame{k}_70x50.png")))
        .collect();
    let mut args = vec!["--json", "--prompt", "p"];
    for f in &frames {
        args.extend(["--frame", f.as_str()]);
    }
    let (code, lines, stderr) = score(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 1);
}

#[test]
fn bench_model_prints_a_table_for_a_random_preset() {
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "bench-model",
            "--preset",
            "mini",
            "--random-weights",
            "--batch",
            "1",
            "--mode",
            "pointwise",
            "--iters",
            "1",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| pointwise | 1 |"), "{stdout}");
    let bad = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args(["bench-model", "--preset", "70b"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown preset"));
}

#[test]
fn a_missing_file_is_reported_per_item_like_a_corrupt_one() {
    let fox = repo("fixtures/images/fox_100x60.png");
    let missing = std::env::temp_dir().join(format!("rd-missing-{}.png", std::process::id()));
    let (code, lines, stderr) = score(&[
        "--json",
        "--prompt",
        "x",
        "--image",
        &fox,
        "--image",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0]["p_yes"].is_number());
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains(missing.to_str().unwrap()),
        "{}",
        lines[1]
    );
    assert_eq!(lines[1]["reason"], "unreadable_file", "{}", lines[1]);
}

#[test]
fn grad_out_writes_an_npy_numpy_can_read_and_the_score_is_unchanged() {
    let fox = repo("fixtures/images/fox_100x60.png");
    let out = std::env::temp_dir().join(format!("rd-grad-{}.npy", std::process::id()));
    let (code, lines, stderr) = score(&[
        "--prompt",
        "a red fox",
        "--image",
        &fox,
        "--grad-out",
        out.to_str().unwrap(),
        "--objective",
        "logit_margin",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let line = &lines[0];
    assert_eq!(line["objective"], "logit_margin");
    assert_eq!(line["grad_shape"], serde_json::json!([60, 100, 3]));
    // The float path on exact 8-bit values scores what the 8-bit path scores, up to the
    // resize's rounding.
    let (_, plain, _) = score(&["--json", "--prompt", "a red fox", "--image", &fox]);
    let (a, b) = (
        line["p_yes"].as_f64().unwrap(),
        plain[0]["p_yes"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-2, "{a} vs {b}");
    let margin = line["logit_yes"].as_f64().unwrap() - line["logit_no"].as_f64().unwrap();
    assert!((line["objective_value"].as_f64().unwrap() - margin).abs() < 1e-5);
    // NumPy's format 1.0: magic, version, header length, a dict header padded to 64 bytes.
    let bytes = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (60, 100, 3,)"),
        "{header}"
    );
    let values: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), 60 * 100 * 3);
    let l2 = values.iter().map(|v| f64::from(v * v)).sum::<f64>().sqrt();
    assert!((l2 - line["grad_l2"].as_f64().unwrap()).abs() < 1e-6 * l2.max(1.0));
    assert!(l2 > 0.0, "the gradient is not zero");
}
