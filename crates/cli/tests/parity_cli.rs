//! `rewarddance parity` as the GPU check runs it, here on the CPU: every fixture passes at the
//! default f32 tolerance, the JSON report says so, and a tolerance of 0 fails (the CPU is close
//! to transformers, not bit-exact) with a nonzero exit code.

use std::process::{Command, Output};

fn fixtures() -> String {
    format!("{}/../../fixtures", env!("CARGO_MANIFEST_DIR"))
}

fn parity(extra: &[&str]) -> Output {
    parity_in("f32", extra)
}

fn parity_in(dtype: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "parity",
            "--fixtures",
            &fixtures(),
            "--device",
            "cpu",
            "--dtype",
            dtype,
        ])
        .args(extra)
        .output()
        .expect("run rewarddance parity")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_fixture_passes_on_the_cpu_in_f32() {
    let json_path = std::env::temp_dir().join(format!("parity-{}.json", std::process::id()));
    let out = parity(&["--json", json_path.to_str().expect("utf8 path")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("parity: PASS"), "{stdout}");
    for name in [
        "tiny-internvl-hf",
        "tiny-internvl-ogv",
        "tiny-internvl-internlm2",
        "tiny-internvl-vit6b",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row for {name}: {stdout}"));
        assert!(row.ends_with("| PASS |"), "{row}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json report"))
            .expect("valid json");
    let _ = std::fs::remove_file(&json_path);
    assert_eq!(report["pass"], true);
    assert_eq!(report["logit_tolerance"], 1e-3);
    let rows = report["fixtures"].as_array().expect("fixtures");
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert!(row["items"].as_u64().expect("items") >= 7, "{row}");
        // The reference tests assert < 1e-4 on the CPU; the report must agree.
        assert!(
            row["max_abs_dlogit"].as_f64().expect("dlogit") < 1e-4,
            "{row}"
        );
        assert!(row["max_abs_dp_yes"].as_f64().expect("dp") < 1e-4, "{row}");
        assert!(row["max_abs_dlogit_vs_cpu"].is_null(), "{row}");
    }
}

#[test]
fn bf16_on_the_cpu_passes_the_default_half_precision_bounds() {
    // The bf16 defaults (8% of each fixture's max |logit|, 0.05 on P(yes)) were set from this
    // measurement; a GPU in bf16 is held to the same bounds.
    let out = parity_in("bf16", &["--json", "-"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["logit_tolerance_relative"], 0.08);
    assert_eq!(report["p_tolerance"], 0.05);
    for row in report["fixtures"].as_array().expect("fixtures") {
        let d = row["max_abs_dlogit"].as_f64().expect("dlogit");
        // Rounded, not exact: bf16 is really in use.
        assert!(d > 1e-4, "{row}");
        assert!(d <= row["logit_tolerance"].as_f64().expect("tol"), "{row}");
    }
}

#[test]
fn a_zero_tolerance_fails_with_a_nonzero_exit_code() {
    let out = parity(&["--tolerance", "0", "--only", "tiny-internvl-hf"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("| tiny-internvl-hf |"), "{stdout}");
    assert!(stdout.contains("| FAIL |"), "{stdout}");
    assert!(stdout.contains("parity: FAIL"), "{stdout}");
}

#[test]
fn json_on_stdout_and_errors_for_missing_fixtures() {
    let out = parity(&["--json", "-", "--only", "tiny-internvl-ogv"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("only JSON on stdout");
    assert_eq!(report["fixtures"][0]["fixture"], "tiny-internvl-ogv");

    let missing = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args(["parity", "--fixtures", "/nonexistent/fixtures"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/fixtures"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
