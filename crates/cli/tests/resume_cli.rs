//! `rewarddance score --manifest --output --resume` as an evaluator runs it over days: runs that
//! fail rows, runs that are resumed again and again, and runs stopped with Ctrl-C. After each,
//! the output holds one line per row in manifest order, and the summary describes that file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, run_score as run};

fn scratch(tag: &str) -> PathBuf {
    common::scratch_dir("resume", tag)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    common::json_lines(path)
}

fn ids(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// The `{"summary": ...}` object the run printed to stderr.
fn summary(stderr: &str) -> serde_json::Value {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("summary").cloned())
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
}

#[test]
fn resumed_runs_keep_one_line_per_row_in_input_order_and_summarise_the_whole_file() {
    let dir = scratch("order");
    std::fs::copy(fixture("gray_64x64.png"), dir.join("ok.png")).unwrap();
    // 30 rows: four name a file that appears only before the third run, one a file that never
    // exists.
    let late = [5, 12, 20, 27];
    let rows: Vec<String> = (0..30)
        .map(|i| {
            let image = match i {
                _ if late.contains(&i) => "late.png",
                9 => "never.png",
                _ => "ok.png",
            };
            format!(r#"{{"id":"r{i}","prompt":"p{i}","image":"{image}"}}"#)
        })
        .collect();
    let manifest = dir.join("rows.jsonl");
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let expected: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    let out = dir.join("out.jsonl");
    let args = [
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--batch-size",
        "4",
    ];
    let (code, _, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ids(&out), expected);
    let first_line_of_r0 = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();

    let resume = [&args[..], &["--resume"]].concat();
    let (code, _, stderr) = run(&resume);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ids(&out), expected, "after the first resume");
    let s = summary(&stderr);
    assert_eq!(
        (&s["rows"], &s["scored"], &s["failed"], &s["skipped"]),
        (&30.into(), &25.into(), &5.into(), &25.into()),
        "{s}"
    );

    std::fs::copy(fixture("fox_100x60.png"), dir.join("late.png")).unwrap();
    let (code, _, stderr) = run(&resume);
    assert_eq!(code, 0, "{stderr}");
    let got = lines(&out);
    assert_eq!(ids(&out), expected, "after the second resume");
    for (i, row) in got.iter().enumerate() {
        assert_eq!(row["p_yes"].is_number(), i != 9, "{row}");
    }
    // Rows scored earlier are carried over as they were written.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().next(),
        Some(first_line_of_r0.as_str())
    );
    let s = summary(&stderr);
    assert_eq!(
        (&s["rows"], &s["scored"], &s["failed"], &s["skipped"]),
        (&30.into(), &29.into(), &1.into(), &25.into()),
        "{s}"
    );
    let p50 = s["p_yes_p50"].as_f64().expect("p50 over the whole file");
    assert!((0.0..=1.0).contains(&p50));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_refuses_an_output_that_shares_no_id_with_the_manifest() {
    let dir = scratch("mismatch");
    let manifest = dir.join("rows.jsonl");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"id":"a","prompt":"p","image":"{}"}}"#,
            fixture("gray_64x64.png")
        ),
    )
    .unwrap();
    let out = dir.join("out.jsonl");
    let other = r#"{"id":"zzz","p_yes":0.5,"p_yes_vocab":0.5,"logit_yes":0.0,"logit_no":0.0}"#;
    std::fs::write(&out, format!("{other}\n")).unwrap();
    let (code, _, stderr) = run(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no id"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{other}\n"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ctrl_c_prints_the_summary_so_far_and_a_resume_hint_and_the_resume_completes_the_file() {
    let dir = scratch("sigint");
    let n = 1000;
    let rows: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"r{i}","prompt":"prompt {i}","image":"{}"}}"#,
                fixture("square_130x130.png")
            )
        })
        .collect();
    let manifest = dir.join("rows.jsonl");
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let out = dir.join("out.jsonl");
    let args = [
        "score",
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--batch-size",
        "2",
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args(args)
        .env_remove("REWARDDANCE_MODEL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&out).map_or(0, |s| s.lines().count()) < 2 {
        assert!(Instant::now() < deadline, "no rows written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let s = summary(&stderr);
    let written = ids(&out);
    assert!(
        written.len() < n,
        "the run finished before Ctrl-C: proves nothing"
    );
    assert_eq!(s["rows"], written.len(), "{s}");
    assert_eq!(s["interrupted"], true, "{s}");
    let expected: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_eq!(written, expected[..written.len()]);

    let (code, _, stderr) = run(&[&args[1..], &["--resume"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ids(&out), expected);
    assert_eq!(summary(&stderr)["skipped"], written.len(), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
