//! Template selection end to end on real checkpoint loads: which template a layout uses, and
//! that the rendered prompt carries exactly one BOS whichever way it is built.

mod common;

use common::repo_root;
use rewarddance_model::pipeline::prompt::prompt_builder;
use rewarddance_model::text::prompt::PromptBuilder;
use rewarddance_model::{AnswerTokens, Checkpoint, FamilyConfig, TemplateChoice};

fn builder(model: &str, chat_template: Option<&str>, choice: TemplateChoice) -> PromptBuilder {
    let mut ckpt = Checkpoint::from_dir(&repo_root().join("fixtures/models").join(model)).unwrap();
    ckpt.chat_template = chat_template.map(String::from);
    let config =
        FamilyConfig::parse(&ckpt.config_json, ckpt.preprocessor_config_json.as_deref()).unwrap();
    let settings = config.prompt_settings();
    prompt_builder(&ckpt, &settings, &choice, &AnswerTokens::default()).unwrap()
}

/// InternVL2-2B-style Jinja template: `{{ bos_token }}` first, as its tokenizer_config.json has.
const BOS_FIRST: &str = "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn a_bos_token_in_the_jinja_template_is_the_only_bos() {
    // transformers' apply_chat_template(tokenize=True) encodes with add_special_tokens=False.
    let b = builder(
        "tiny-internvl-internlm2",
        Some(BOS_FIRST),
        TemplateChoice::Jinja,
    );
    let bos = b.token_id("<s>").unwrap();
    let rendered = b.render("<image>\nQ").unwrap();
    assert!(
        rendered.starts_with("<s><|im_start|>user\n"),
        "{rendered:?}"
    );
    let ids = b.tokenize(&rendered, &[4]).unwrap();
    assert_eq!(ids[0], bos);
    assert_ne!(ids[1], bos, "double BOS: {:?}", &ids[..4]);
}

#[test]
fn the_opengvlab_layout_uses_config_template_and_adds_the_bos_once() {
    // chat() ignores the Jinja template and tokenises get_conv_template(config.template)'s
    // prompt with tokenizer(query): InternLM2's tokenizer adds one BOS.
    let b = builder(
        "tiny-internvl-internlm2",
        Some(BOS_FIRST),
        TemplateChoice::Auto,
    );
    assert_eq!(b.template_source().name.as_deref(), Some("internvl2_5"));
    let rendered = b.render("<image>\nQ").unwrap();
    assert!(
        rendered.starts_with("<|im_start|>system\n你是书生·万象，英文名是InternVL，是由上海"),
        "{rendered:?}"
    );
    let ids = b.tokenize(&rendered, &[4]).unwrap();
    let bos = b.token_id("<s>").unwrap();
    assert_eq!(ids[0], bos);
    assert_ne!(ids[1], bos);
}

#[test]
fn the_hf_layout_uses_the_checkpoint_jinja() {
    let b = builder("tiny-internvl-hf", None, TemplateChoice::Auto);
    assert_eq!(b.template_source().kind, "jinja");
    assert!(!b.render("Q").unwrap().contains("system"));
    let b = builder(
        "tiny-internvl-hf",
        None,
        TemplateChoice::Conversation("internlm2-chat".into()),
    );
    assert!(b.render("Q").unwrap().starts_with(
        "<|im_start|>system\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型"
    ));
}
