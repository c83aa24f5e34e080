//! `rewarddance score --manifest/--dir`: batch evaluation end to end on the bundled model.

mod common;

use std::path::PathBuf;

use common::{fixture, run_score as run, serve, serve_with};

fn scratch(tag: &str) -> PathBuf {
    common::scratch_dir("eval", tag)
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    common::json_lines(path)
}

#[test]
fn manifest_rows_come_back_in_order_and_bad_rows_do_not_stop_the_run() {
    let dir = scratch("manifest");
    std::fs::copy(fixture("fox_100x60.png"), dir.join("fox.png")).unwrap();
    let manifest = dir.join("rows.jsonl");
    let rows = [
        r#"{"id":"first","prompt":"a fox","image":"fox.png"}"#.to_string(),
        r#"{"id":"missing","prompt":"x","image":"nope.png"}"#.to_string(),
        "this is not json".to_string(),
        format!(
            r#"{{"prompt":"pair","image":"fox.png","reference":"{}"}}"#,
            fixture("square_130x130.png")
        ),
    ];
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let out = dir.join("out.jsonl");
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let got = lines(&out);
    let ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["first", "missing", "#3", "#4"]);
    assert!(got[0]["p_yes"].is_number() && got[3]["p_yes"].is_number());
    assert!(got[1]["error"].as_str().unwrap().contains("nope.png"));
    assert!(got[2]["error"]
        .as_str()
        .unwrap()
        .contains("bad manifest line"));
    assert_eq!(got[1]["reason"], "unreadable_file", "{}", got[1]);
    assert_eq!(got[2]["reason"], "bad_row", "{}", got[2]);
    assert!(
        stderr.contains(r#""scored":2"#) && stderr.contains(r#""failed":2"#),
        "{stderr}"
    );

    // Resume: scored rows are skipped, failed ones retried; their new lines replace the old.
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(r#""skipped":2"#), "{stderr}");
    assert_eq!(lines(&out).len(), 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_directory_is_scored_file_by_file() {
    let dir = scratch("dir");
    for name in ["fox_100x60.png", "gray_64x64.png"] {
        std::fs::copy(fixture(name), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let (code, stdout, stderr) = run(&["--dir", dir.to_str().unwrap(), "--prompt", "p"]);
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["fox_100x60.png", "gray_64x64.png"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_manifest_scored_on_a_server_matches_in_process_scores() {
    let dir = scratch("remote");
    let rows: Vec<String> = [
        "fox_100x60.png",
        "gray_64x64.png",
        "tall_30x220.png",
        "nope.png",
        "square_130x130.png",
    ]
    .iter()
    .enumerate()
    .map(|(i, name)| {
        format!(
            r#"{{"id":"r{i}","prompt":"p{i}","image":"{}"}}"#,
            fixture(name)
        )
    })
    .collect();
    let manifest = dir.join("rows.jsonl");
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let (local_out, remote_out) = (dir.join("local.jsonl"), dir.join("remote.jsonl"));
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        local_out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");

    let (mut server, url) = serve();
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        remote_out.to_str().unwrap(),
        "--server",
        &url,
        "--batch-size",
        "2",
        "--in-flight",
        "2",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0, "{stderr}");
    let (local, remote) = (lines(&local_out), lines(&remote_out));
    assert_eq!(local.len(), remote.len());
    for (l, r) in local.iter().zip(&remote) {
        assert_eq!(l["id"], r["id"]);
        match (l["p_yes"].as_f64(), r["p_yes"].as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-5, "{l} vs {r}"),
            (None, None) => {
                assert!(r["error"].is_string());
                assert_eq!(l["reason"], r["reason"], "{l} vs {r}");
            }
            _ => panic!("{l} vs {r}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rows_with_extra_fields_and_numeric_ids_are_scored_and_keep_their_fields() {
    let dir = scratch("extra");
    std::fs::copy(fixture("fox_100x60.png"), dir.join("fox.png")).unwrap();
    std::fs::write(dir.join("corrupt.png"), b"not a png").unwrap();
    let manifest = dir.join("rows.jsonl");
    let rows = [
        r#"{"id":7,"prompt":"a fox","image":"fox.png","seed":42,"meta":{"split":"val"}}"#,
        r#"{"id":"dup","prompt":"a fox","image":"fox.png"}"#,
        r#"{"id":"dup","prompt":"a fox","image":"corrupt.png"}"#,
        r#"{"id":"clash","prompt":"a fox","image":"fox.png","p_yes":1.0}"#,
    ];
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let out = dir.join("out.jsonl");
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let got = lines(&out);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0]["id"], 7, "{}", got[0]);
    assert_eq!(got[0]["seed"], 42, "{}", got[0]);
    assert_eq!(got[0]["meta"]["split"], "val", "{}", got[0]);
    assert!(got[0]["p_yes"].is_number(), "{}", got[0]);
    assert!(got[1]["p_yes"].is_number(), "{}", got[1]);
    assert_eq!(got[2]["reason"], "invalid_image", "{}", got[2]);
    // A field the output itself writes cannot be carried through: the row fails, clearly.
    assert_eq!(got[3]["reason"], "invalid_input", "{}", got[3]);
    assert!(
        got[3]["error"].as_str().unwrap().contains("p_yes"),
        "{}",
        got[3]
    );
    assert!(
        stderr.contains("warning") && stderr.contains(r#""dup""#),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn manifest_rows_naming_rewards_get_one_entry_per_reward_locally_and_on_a_server() {
    let dir = scratch("rewards");
    let repo = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let model = format!("{repo}/fixtures/models/tiny-internvl-hf");
    let rewards = dir.join("rewards.toml");
    std::fs::write(
        &rewards,
        format!(
            "[rewards.default]\n\n[rewards.swift]\nadapter = \"{repo}/fixtures/adapters/hf-llm-swift\"\n"
        ),
    )
    .unwrap();
    let rows = [
        format!(
            r#"{{"id":"both","prompt":"a fox","image":"{}","rewards":["swift","default"]}}"#,
            fixture("fox_100x60.png")
        ),
        format!(
            r#"{{"id":"plain","prompt":"a fox","image":"{}"}}"#,
            fixture("fox_100x60.png")
        ),
        format!(
            r#"{{"id":"bad","prompt":"a fox","image":"{}","rewards":["nope"]}}"#,
            fixture("fox_100x60.png")
        ),
    ];
    let manifest = dir.join("rows.jsonl");
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let model_flags = [
        "--model",
        model.as_str(),
        "--rewards",
        rewards.to_str().unwrap(),
    ];
    let (local_out, remote_out) = (dir.join("local.jsonl"), dir.join("remote.jsonl"));
    let mut args = vec![
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        local_out.to_str().unwrap(),
    ];
    args.extend(model_flags);
    let (code, _, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    let (mut server, url, _) = serve_with(&model_flags);
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        remote_out.to_str().unwrap(),
        "--server",
        &url,
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0, "{stderr}");
    for out in [&local_out, &remote_out] {
        let got = lines(out);
        let both = &got[0];
        let names: Vec<&String> = both["rewards"].as_object().unwrap().keys().collect();
        assert_eq!(names.len(), 2, "{both}");
        let (swift, default) = (&both["rewards"]["swift"], &both["rewards"]["default"]);
        // The top level is the first named reward's; the plain row is the default reward's.
        assert_eq!(both["p_yes"], swift["p_yes"], "{both}");
        // (Another row of the batch: equal up to packing, not bit for bit.)
        let plain = got[1]["p_yes"].as_f64().unwrap();
        assert!(
            (plain - default["p_yes"].as_f64().unwrap()).abs() < 1e-5,
            "{}",
            got[1]
        );
        assert!(got[1].get("rewards").is_none(), "{}", got[1]);
        let gap = (swift["p_yes"].as_f64().unwrap() - default["p_yes"].as_f64().unwrap()).abs();
        assert!(gap > 1e-3, "the adapter changes the score: {both}");
        assert_eq!(got[2]["reason"], "unknown_reward", "{}", got[2]);
    }
    let (local, remote) = (lines(&local_out), lines(&remote_out));
    for name in ["swift", "default"] {
        let (a, b) = (
            &local[0]["rewards"][name]["p_yes"],
            &remote[0]["rewards"][name]["p_yes"],
        );
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5,
            "{name}: {a} vs {b}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
