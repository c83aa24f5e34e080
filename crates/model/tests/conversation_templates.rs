//! Our conversation templates against prompts rendered by OpenGVLab's own `conversation.py`
//! (`fixtures/real/conversation_templates.json`, written by
//! `tools/conformance/conversation_templates.py` from github.com/OpenGVLab/InternVL).

use rewarddance_model::text::conversation;

fn reference() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/real/conversation_templates.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file")).expect("json")
}

#[test]
fn every_template_renders_exactly_as_conversation_py() {
    let reference = reference();
    let templates = reference["templates"].as_object().expect("templates");
    let mut names: Vec<&str> = templates.keys().map(String::as_str).collect();
    let mut ours = conversation::known_names();
    names.sort();
    ours.sort();
    assert_eq!(
        names, ours,
        "the reference and this crate know different templates"
    );
    let mut checked = 0;
    for (name, t) in templates {
        let conv = conversation::find(name).expect("known");
        assert_eq!(
            conv.system_message,
            t["system_message"].as_str().unwrap(),
            "{name}: system message"
        );
        assert_eq!(
            conv.stop_token(),
            t["stop_token"].as_str().unwrap(),
            "{name}"
        );
        for case in t["cases"].as_array().unwrap() {
            let system = case["system_message"]
                .as_str()
                .unwrap_or(conv.system_message);
            let got = conv.render(system, case["user"].as_str().unwrap());
            assert_eq!(got, case["prompt"].as_str().unwrap(), "{name}: {case}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases");
}
