//! Which chat template builds a checkpoint's prompt, and rendering it.
//!
//! The rule follows what each layout's own code does:
//! - OpenGVLab layout (`InternVLChatModel`): `chat()` always uses
//!   `get_conv_template(config.template)` with `config.system_message` when set, and tokenises the
//!   result with `tokenizer(query)` (special tokens added: InternLM2's `<s>`). The checkpoint's
//!   Jinja `chat_template` is ignored unless asked for (`--template jinja`).
//! - Hugging Face layout (`InternVLForConditionalGeneration`): `processor.apply_chat_template`
//!   renders the checkpoint's Jinja template (`chat_template.jinja`, else `chat_template.json`,
//!   else `tokenizer_config.json`'s `chat_template`) and tokenises it with
//!   `add_special_tokens=False` (a `{{ bos_token }}` in the template is the only BOS).
//!
//! A template name we do not know, or a checkpoint with no template for its layout, fails the
//! load with a message that says what to pass instead.

use minijinja::{context, Environment};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::text::conversation::{self, Conversation};

/// The caller's choice of template (`--template`, [`crate::LoadOptions::template`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TemplateChoice {
    /// What the checkpoint's own code uses (see the module docs).
    #[default]
    Auto,
    /// The checkpoint's Jinja chat template, whatever the layout.
    Jinja,
    /// A named OpenGVLab conversation template (`internvl2_5`, `internlm2-chat`, ...).
    Conversation(String),
}

impl std::str::FromStr for TemplateChoice {
    type Err = Error;

    /// `auto`, `jinja`, or a conversation template name (checked against the known ones).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(TemplateChoice::Auto),
            "jinja" => Ok(TemplateChoice::Jinja),
            name => find_conversation(name, "--template").map(|_| Self::Conversation(name.into())),
        }
    }
}

/// Which template a checkpoint's own code renders prompts with when none is asked for; the
/// family decides it from the checkpoint's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DefaultTemplate {
    /// The conversation template `config.json`'s `template` names (remote-code checkpoints:
    /// `InternVLChatModel.chat()`).
    Conversation,
    /// The checkpoint's Jinja chat template (`processor.apply_chat_template`).
    Jinja,
}

/// What a template can come from: the family's rule, `config.json` fields and the checkpoint's
/// files.
pub struct TemplateInputs<'a> {
    /// What `TemplateChoice::Auto` resolves to.
    pub default: DefaultTemplate,
    /// `config.json`'s `template` (OpenGVLab layout).
    pub config_template: Option<&'a str>,
    /// `config.json`'s `system_message` (OpenGVLab layout), overriding the template's.
    pub config_system_message: Option<&'a str>,
    /// `chat_template.jinja` / `chat_template.json`'s template, when the checkpoint has one.
    pub chat_template_file: Option<&'a str>,
    /// `tokenizer_config.json` (its `chat_template`), or `Null`.
    pub tokenizer_config: &'a Value,
}

/// The template in use and why, as `check-model` and `--explain` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TemplateSource {
    /// `conversation` (OpenGVLab's `conversation.py`) or `jinja`.
    pub kind: &'static str,
    /// The conversation template's name (`None` for Jinja).
    pub name: Option<String>,
    /// Where it came from, e.g. `config.json "template"`, `--template`, `chat_template.jinja`.
    pub from: String,
    /// The system message a conversation template renders (`None` for Jinja).
    pub system_message: Option<String>,
    /// Whether the tokenizer adds its special tokens (BOS) to the rendered text.
    pub add_special_tokens: bool,
}

/// A resolved template, ready to render user messages.
pub struct ChatTemplate {
    kind: Kind,
    source: TemplateSource,
}

enum Kind {
    Conversation {
        conv: &'static Conversation,
        system_message: String,
    },
    Jinja(Box<Environment<'static>>),
}

impl ChatTemplate {
    /// Picks the template for `choice` (see the module docs for the rule).
    pub fn resolve(choice: &TemplateChoice, inputs: &TemplateInputs) -> Result<Self> {
        let system = |conv: &'static Conversation| {
            inputs
                .config_system_message
                .unwrap_or(conv.system_message)
                .to_string()
        };
        match (choice, inputs.default) {
            (TemplateChoice::Conversation(name), _) => {
                let conv = find_conversation(name, "--template")?;
                Ok(Self::conversation(conv, system(conv), "--template"))
            }
            (TemplateChoice::Jinja, _) => Self::jinja(inputs).ok_or_else(|| {
                Error::Template(
                    "--template jinja: the checkpoint has no chat template (chat_template.jinja, \
                     chat_template.json or tokenizer_config.json's chat_template)"
                        .into(),
                )
            })?,
            (TemplateChoice::Auto, DefaultTemplate::Conversation) => {
                let name = inputs.config_template.ok_or_else(|| {
                    Error::Template(format!(
                        "config.json has no \"template\" (InternVLChatModel.chat() builds its \
                         prompt with get_conv_template(config.template)); pass --template NAME \
                         (one of {:?}) or --template jinja",
                        conversation::known_names()
                    ))
                })?;
                let conv = find_conversation(name, "config.json \"template\"")?;
                Ok(Self::conversation(
                    conv,
                    system(conv),
                    "config.json \"template\"",
                ))
            }
            (TemplateChoice::Auto, DefaultTemplate::Jinja) => {
                Self::jinja(inputs).ok_or_else(|| {
                    Error::Template(format!(
                    "the checkpoint has no chat template (chat_template.jinja, chat_template.json \
                     or tokenizer_config.json's chat_template), which the Hugging Face layout \
                     renders prompts with; pass --template NAME (one of {:?}) to use an \
                     OpenGVLab conversation template",
                    conversation::known_names()
                ))
                })?
            }
        }
    }

    fn conversation(conv: &'static Conversation, system_message: String, from: &str) -> Self {
        ChatTemplate {
            source: TemplateSource {
                kind: "conversation",
                name: Some(conv.name.to_string()),
                from: from.to_string(),
                system_message: Some(system_message.clone()),
                add_special_tokens: true,
            },
            kind: Kind::Conversation {
                conv,
                system_message,
            },
        }
    }

    /// The checkpoint's Jinja template, if it has one (`None`), or the parse error.
    fn jinja(inputs: &TemplateInputs) -> Option<Result<Self>> {
        let (text, from) = match inputs.chat_template_file {
            Some(t) => (t.to_string(), "chat_template file"),
            None => (
                template_from_config(&inputs.tokenizer_config["chat_template"])?,
                "tokenizer_config.json \"chat_template\"",
            ),
        };
        Some(jinja_environment(text).map(|env| ChatTemplate {
            kind: Kind::Jinja(Box::new(env)),
            source: TemplateSource {
                kind: "jinja",
                name: None,
                from: from.to_string(),
                system_message: None,
                add_special_tokens: false,
            },
        }))
    }

    /// Where the template came from and how its output is tokenised.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// Whether the rendered prompt is tokenised with the tokenizer's special tokens (BOS).
    pub fn add_special_tokens(&self) -> bool {
        self.source.add_special_tokens
    }

    /// The token that ends the assistant's turn, when the template says (conversation templates:
    /// `sep.strip()`, where `chat()` stops generating).
    pub fn stop_token(&self) -> Option<&'static str> {
        match &self.kind {
            Kind::Conversation { conv, .. } => Some(conv.stop_token()),
            Kind::Jinja(_) => None,
        }
    }

    /// The prompt for one user message, ending where the assistant's answer starts.
    pub fn render(&self, user_content: &str, bos_token: &str, eos_token: &str) -> Result<String> {
        match &self.kind {
            Kind::Conversation {
                conv,
                system_message,
            } => Ok(conv.render(system_message, user_content)),
            Kind::Jinja(env) => env
                .get_template("chat")
                .map_err(|e| Error::Template(e.to_string()))?
                .render(context! {
                    messages => vec![context! { role => "user", content => user_content }],
                    add_generation_prompt => true,
                    bos_token => bos_token,
                    eos_token => eos_token,
                })
                .map_err(|e| Error::Template(format!("rendering: {e}"))),
        }
    }
}

fn find_conversation(name: &str, from: &str) -> Result<&'static Conversation> {
    conversation::find(name).ok_or_else(|| {
        Error::Template(format!(
            "{from}: unknown conversation template {name:?} (known: {:?}; or use --template jinja \
             for the checkpoint's Jinja chat template)",
            conversation::known_names()
        ))
    })
}

/// A minijinja environment that renders like transformers' `apply_chat_template`.
fn jinja_environment(template: String) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    // transformers renders chat templates with trim_blocks and lstrip_blocks on.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template_owned("chat", template)
        .map_err(|e| Error::Template(format!("cannot parse chat template: {e}")))?;
    Ok(env)
}

/// `chat_template` as a string, or the `default` entry of a list of named templates.
fn template_from_config(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str().map(String::from)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "chat_template_tests.rs"]
mod tests;
