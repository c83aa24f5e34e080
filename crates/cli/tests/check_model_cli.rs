//! `rewarddance check-model`: what a load chooses, on the committed fixtures of both layouts.

mod common;

fn check_model(args: &[&str]) -> (i32, String, String) {
    common::run("check-model", args)
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../../fixtures/models/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn reports_template_tokenizer_tiling_answers_and_rope() {
    let (code, out, err) = check_model(&["--model", &fixture("tiny-internvl-internlm2")]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(r["layout"], "OpenGvLab");
    assert_eq!(r["language_model"], "InternLm2");
    assert_eq!(r["template"]["kind"], "conversation");
    assert_eq!(r["template"]["name"], "internvl2_5");
    assert_eq!(r["template"]["from"], "config.json \"template\"");
    assert_eq!(r["template"]["add_special_tokens"], true);
    assert!(r["tokenizer"]["source"]
        .as_str()
        .unwrap()
        .contains("tokenizer.model"));
    assert_eq!(r["rope"]["scaling"], "dynamic");
    assert!(r["answers"]["yes"][1].is_u64());
    assert!(r["tiling"]["max_tiles"].is_u64());

    let (code, out, err) = check_model(&["--model", &fixture("tiny-internvl-hf")]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(r["template"]["kind"], "jinja");
    assert_eq!(r["template"]["add_special_tokens"], false);
}

#[test]
fn an_unknown_template_is_refused_with_the_known_names() {
    let (code, _, err) = check_model(&[
        "--model",
        &fixture("tiny-internvl-ogv"),
        "--template",
        "vicuna_v1.1",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("vicuna_v1.1") && err.contains("internvl2_5"),
        "{err}"
    );
}
