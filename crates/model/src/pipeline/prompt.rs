//! A checkpoint's prompt builder: its tokenizer, and the chat template the caller's choice
//! resolves to for its family's rule and its files.

use crate::error::Result;
use crate::runtime::checkpoint::Checkpoint;
use crate::text::chat_template::{ChatTemplate, TemplateChoice, TemplateInputs};
use crate::text::prompt::{AnswerTokens, PromptBuilder, PromptSettings};
use crate::text::tokenizer_files::json_or_null;

/// The prompt builder of `checkpoint` (see [`crate::text::chat_template`] for the rule).
pub fn prompt_builder(
    checkpoint: &Checkpoint,
    settings: &PromptSettings,
    choice: &TemplateChoice,
    answers: &AnswerTokens,
) -> Result<PromptBuilder> {
    let tokenizer_config = json_or_null(
        "tokenizer_config.json",
        checkpoint.tokenizer_config_json.as_deref(),
    )?;
    let template = ChatTemplate::resolve(
        choice,
        &TemplateInputs {
            default: settings.default_template,
            config_template: settings.config_template.as_deref(),
            config_system_message: settings.config_system_message.as_deref(),
            chat_template_file: checkpoint.chat_template.as_deref(),
            tokenizer_config: &tokenizer_config,
        },
    )?;
    PromptBuilder::new(
        &checkpoint.tokenizer_json,
        template,
        &tokenizer_config,
        settings.image_tokens,
        answers,
    )
}
