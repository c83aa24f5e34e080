//! What the flags promise: config-file errors say where and what, every flag the README says
//! has an environment variable has one, and `bench` offers only flags that do something.

mod common;

use common::run;

/// `rewarddance serve --config FILE` with `text` as the file: (exit code, stderr, file path).
fn serve_with_config(tag: &str, text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("rd-config-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    let (code, _, stderr) = run(
        "serve",
        &["--config", &path, "--addr", "127.0.0.1:0", "--no-metrics"],
    );
    std::fs::remove_dir_all(&dir).ok();
    (code, stderr, path)
}

#[test]
fn a_snake_case_key_names_the_file_the_line_and_the_dash_form() {
    let (code, stderr, path) = serve_with_config(
        "snake",
        "# batching\nmax-batch-delay-ms = 1\nmax_batch_items = 8\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{path}:3")), "{stderr}");
    assert!(stderr.contains("max_batch_items"), "{stderr}");
    assert!(stderr.contains("max-batch-items"), "{stderr}");
    assert!(!stderr.contains("error: error:"), "{stderr}");
}

#[test]
fn a_bad_value_names_the_file_the_line_and_the_key_once() {
    let (code, stderr, path) = serve_with_config("value", "max-batch-items = \"lots\"\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{path}:1")), "{stderr}");
    assert!(stderr.contains("max-batch-items"), "{stderr}");
    assert!(stderr.contains("lots"), "{stderr}");
    assert!(!stderr.contains("error: error:"), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
}

#[test]
fn a_toml_syntax_error_names_the_file() {
    let (code, stderr, path) = serve_with_config("syntax", "max-batch-items = = 3\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&path), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
}

/// The long flags of `rewarddance SUBCOMMAND --help` and whether each shows `[env: ...]`.
fn flags_and_env(subcommand: &str) -> Vec<(String, bool)> {
    let (code, help, stderr) = run(subcommand, &["--help"]);
    assert_eq!(code, 0, "{stderr}");
    // clap prints each option as an indented `--flag` line, its help below, `[env: X=]` last.
    let mut out: Vec<(String, bool)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--").or_else(|| {
            t.strip_prefix('-')
                .and_then(|r| r.split_once(", --"))
                .map(|(_, r)| r)
        }) {
            let name = rest.split([' ', '=', '<', ',']).next().unwrap_or(rest);
            out.push((format!("--{name}"), false));
        }
        if t.contains("[env: ") {
            if let Some(last) = out.last_mut() {
                last.1 = true;
            }
        }
    }
    assert!(out.len() > 5, "{help}");
    out
}

/// The backquoted flags of the README's "Flags without an environment variable" sentence.
fn readme_flags_without_env() -> Vec<String> {
    let readme =
        std::fs::read_to_string(format!("{}/../../README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let start = readme
        .find("Flags without an environment variable")
        .expect("the README lists the flags that have no variable");
    let sentence = &readme[start..start + readme[start..].find(".\n").unwrap()];
    sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[test]
fn every_score_and_serve_flag_has_a_variable_unless_the_readme_says_otherwise() {
    let exempt = readme_flags_without_env();
    assert!(exempt.contains(&"--prompt".to_string()), "{exempt:?}");
    for sub in ["score", "serve"] {
        for (flag, has_env) in flags_and_env(sub) {
            let exempted = exempt.contains(&flag);
            assert!(
                has_env != exempted,
                "`{sub} {flag}`: env var {has_env}, listed as without one in the README {exempted}"
            );
        }
    }
}

#[test]
fn bench_offers_no_flag_that_does_nothing() {
    let offered: Vec<String> = flags_and_env("bench").into_iter().map(|f| f.0).collect();
    let token_file = std::env::temp_dir().join(format!("rd-bench-token-{}", std::process::id()));
    std::fs::write(&token_file, "t").unwrap();
    let token_file = token_file.to_str().unwrap();
    // Each with a valid value, so that only its being refused can make the call fail.
    let unused: [&[&str]; 14] = [
        &["--addr", "127.0.0.1:0"],
        &["--metrics-addr", "127.0.0.1:0"],
        &["--no-metrics"],
        &["--log-format", "json"],
        &["--log", "debug"],
        &["--drain-timeout-s", "1"],
        &["--tls-cert", "c.pem", "--tls-key", "k.pem"],
        &["--auth-token", "t"],
        &["--auth-token-file", token_file],
        &["--max-stream-in-flight", "1"],
        &["--max-rank-candidates", "2"],
        &["--max-rationale-tokens", "1"],
        &["--default-rationale-tokens", "1"],
        &["--max-decoding-sequences", "1"],
    ];
    let tiny = [
        "--items",
        "1",
        "--rounds",
        "1",
        "--no-baseline",
        "--concurrency",
        "1",
    ];
    for flag_args in unused {
        let flag = flag_args[0];
        assert!(!offered.contains(&flag.to_string()), "bench offers {flag}");
        // Nor does it take it silently.
        let (code, _, stderr) = run("bench", &[flag_args, &tiny[..]].concat());
        assert_eq!(code, 2, "bench {flag_args:?}: {stderr}");
        assert!(stderr.contains(flag), "bench {flag_args:?}: {stderr}");
    }
    std::fs::remove_file(token_file).ok();
    for used in ["--target", "--concurrency", "--max-batch-items", "--token"] {
        assert!(offered.contains(&used.to_string()), "bench lacks {used}");
    }
    // The token is for --target's server; bench's own server takes no token.
    let (code, _, stderr) = run("bench", &[&["--token", "t"][..], &tiny[..]].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--target"), "{stderr}");
}
