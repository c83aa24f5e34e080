use super::*;

const JINJA: &str = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn inputs<'a>(
    default: DefaultTemplate,
    template: Option<&'a str>,
    tc: &'a Value,
) -> TemplateInputs<'a> {
    TemplateInputs {
        default,
        config_template: template,
        config_system_message: None,
        chat_template_file: None,
        tokenizer_config: tc,
    }
}

#[test]
fn opengvlab_layout_follows_config_template_not_the_jinja_one() {
    let tc = serde_json::json!({ "chat_template": JINJA });
    for name in ["internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat"] {
        let t = ChatTemplate::resolve(
            &TemplateChoice::Auto,
            &inputs(DefaultTemplate::Conversation, Some(name), &tc),
        )
        .unwrap();
        let conv = conversation::find(name).unwrap();
        assert_eq!(t.source().name.as_deref(), Some(name));
        assert!(
            t.add_special_tokens(),
            "chat() tokenises with tokenizer(query)"
        );
        assert_eq!(
            t.render("Q", "<s>", "</s>").unwrap(),
            conv.render(conv.system_message, "Q")
        );
    }
}

#[test]
fn config_system_message_overrides_the_templates() {
    let tc = Value::Null;
    let mut i = inputs(DefaultTemplate::Conversation, Some("internvl2_5"), &tc);
    i.config_system_message = Some("SYS");
    let t = ChatTemplate::resolve(&TemplateChoice::Auto, &i).unwrap();
    assert!(t
        .render("Q", "", "")
        .unwrap()
        .starts_with("<|im_start|>system\nSYS<|im_end|>\n"));
}

#[test]
fn unknown_or_missing_template_names_are_refused() {
    let tc = Value::Null;
    let err = ChatTemplate::resolve(
        &TemplateChoice::Auto,
        &inputs(DefaultTemplate::Conversation, Some("vicuna_v1.1"), &tc),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("vicuna_v1.1") && err.contains("internvl2_5"),
        "{err}"
    );
    let err = ChatTemplate::resolve(
        &TemplateChoice::Auto,
        &inputs(DefaultTemplate::Conversation, None, &tc),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no \"template\""), "{err}");
    assert!("no-such-template".parse::<TemplateChoice>().is_err());
    assert_eq!(
        "jinja".parse::<TemplateChoice>().unwrap(),
        TemplateChoice::Jinja
    );
}

#[test]
fn hf_layout_uses_the_checkpoint_jinja_without_special_tokens() {
    let tc = serde_json::json!({ "chat_template": JINJA });
    let t = ChatTemplate::resolve(
        &TemplateChoice::Auto,
        &inputs(DefaultTemplate::Jinja, None, &tc),
    )
    .unwrap();
    assert_eq!(t.source().kind, "jinja");
    assert!(
        !t.add_special_tokens(),
        "apply_chat_template tokenises with add_special_tokens=False"
    );
    assert_eq!(
        t.render("Q", "<s>", "</s>").unwrap(),
        "<s><|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    );
    let none = Value::Null;
    let err = ChatTemplate::resolve(
        &TemplateChoice::Auto,
        &inputs(DefaultTemplate::Jinja, None, &none),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no chat template"), "{err}");
}

#[test]
fn explicit_choices_win_over_the_layout_rule() {
    let tc = serde_json::json!({ "chat_template": JINJA });
    let t = ChatTemplate::resolve(
        &TemplateChoice::Jinja,
        &inputs(DefaultTemplate::Conversation, Some("internvl2_5"), &tc),
    )
    .unwrap();
    assert_eq!(t.source().kind, "jinja");
    let t = ChatTemplate::resolve(
        &TemplateChoice::Conversation("internlm2-chat".into()),
        &inputs(DefaultTemplate::Jinja, None, &tc),
    )
    .unwrap();
    assert_eq!(t.source().from, "--template");
    let none = Value::Null;
    assert!(ChatTemplate::resolve(
        &TemplateChoice::Jinja,
        &inputs(DefaultTemplate::Conversation, Some("internvl2_5"), &none)
    )
    .is_err());
}
