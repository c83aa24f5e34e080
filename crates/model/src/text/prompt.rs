//! From an item to token ids: RewardDance instructions, the checkpoint's chat template, image
//! placeholder expansion (`<img>` + N x `<IMG_CONTEXT>` + `</img>`), tokenisation.

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::item::{Candidate, Mode, ScoreItem};
use crate::text::chat_template::{ChatTemplate, DefaultTemplate, TemplateSource};

/// The markers a family's prompts use for images (each must be one token of the tokenizer,
/// except the placeholder, which never reaches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokens {
    /// Stands for one image in the user message; replaced after the template is rendered.
    pub placeholder: &'static str,
    /// Opens an image's features.
    pub start: &'static str,
    /// Marks one feature row: where image features are spliced in.
    pub context: &'static str,
    /// Closes an image's features.
    pub end: &'static str,
}

/// What a family tells the prompt builder about a checkpoint.
#[derive(Debug, Clone)]
pub struct PromptSettings {
    /// The image markers.
    pub image_tokens: ImageTokens,
    /// What `TemplateChoice::Auto` resolves to for this checkpoint.
    pub default_template: DefaultTemplate,
    /// `config.json`'s conversation template name, when it has one.
    pub config_template: Option<String>,
    /// `config.json`'s system message, overriding the template's, when set.
    pub config_system_message: Option<String>,
}

/// Default pointwise instruction for images (`{prompt}` is replaced by the item's prompt).
pub const POINTWISE_IMAGE_INSTRUCTION: &str = "Please evaluate the image generated from the prompt: '{prompt}'. Does the image match the prompt and have high visual quality? Please answer \"yes\" or \"no\".";
/// Default pointwise instruction for videos.
pub const POINTWISE_VIDEO_INSTRUCTION: &str = "Please evaluate the video generated from the prompt: '{prompt}'. Does the video match the prompt and have high visual quality? Please answer \"yes\" or \"no\".";
/// Default pairwise instruction (Image 1 = reference, Image 2 = candidate).
pub const PAIRWISE_INSTRUCTION: &str = "Please evaluate two images generated from the prompt: '{prompt}'. Is image 2 better than image 1? Please answer \"yes\" or \"no\".";

/// Instructions replacing the defaults; each unset one keeps
/// [`PromptBuilder::default_instruction`]. An item's own instruction wins over both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instructions {
    /// Pointwise, for images.
    pub pointwise: Option<String>,
    /// Pairwise.
    pub pairwise: Option<String>,
    /// Pointwise, for videos.
    pub video: Option<String>,
}

impl Instructions {
    /// The instruction for `mode` and candidate kind.
    pub fn for_item(&self, mode: Mode, video: bool) -> &str {
        let own = match (mode, video) {
            (Mode::Pairwise, _) => &self.pairwise,
            (Mode::Pointwise, false) => &self.pointwise,
            (Mode::Pointwise, true) => &self.video,
        };
        own.as_deref()
            .unwrap_or_else(|| PromptBuilder::default_instruction(mode, video))
    }
}

/// Answer tokens whose probability is the reward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerTokens {
    /// The positive answer (default `yes`).
    pub yes: String,
    /// The negative answer (default `no`).
    pub no: String,
}

impl AnswerTokens {
    /// The default positive answer.
    pub const DEFAULT_YES: &'static str = "yes";
    /// The default negative answer.
    pub const DEFAULT_NO: &'static str = "no";
}

impl Default for AnswerTokens {
    fn default() -> Self {
        AnswerTokens {
            yes: Self::DEFAULT_YES.into(),
            no: Self::DEFAULT_NO.into(),
        }
    }
}

/// Turns items into token ids for one checkpoint.
pub struct PromptBuilder {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    bos_token: String,
    eos_token: String,
    /// Strings that must not appear in user text (special tokens and the image placeholder).
    reserved: Vec<String>,
    image_context_id: u32,
    image_tokens: ImageTokens,
    yes_id: u32,
    no_id: u32,
}

impl PromptBuilder {
    /// Builds from `tokenizer.json` bytes, the resolved chat template and the parsed
    /// `tokenizer_config.json` (`Null` when the checkpoint has none).
    pub fn new(
        tokenizer_json: &[u8],
        template: ChatTemplate,
        config: &serde_json::Value,
        image_tokens: ImageTokens,
        answers: &AnswerTokens,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let token_text = |v: &serde_json::Value| -> String {
            v.as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut reserved: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        // The image markers are reserved whatever the tokenizer's `special` flag says: they decide
        // where image features go.
        reserved.extend(
            [
                image_tokens.placeholder,
                image_tokens.start,
                image_tokens.end,
                image_tokens.context,
            ]
            .map(String::from),
        );
        reserved.sort();
        reserved.dedup();

        let context = image_tokens.context;
        let image_context_id = tokenizer
            .token_to_id(context)
            .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {context} token")))?;
        for t in [image_tokens.start, image_tokens.end] {
            if tokenizer.token_to_id(t).is_none() {
                return Err(Error::Tokenizer(format!("the tokenizer has no {t} token")));
            }
        }
        let yes_id = single_token(&tokenizer, &answers.yes, "answer token")?;
        let no_id = single_token(&tokenizer, &answers.no, "answer token")?;
        Ok(PromptBuilder {
            yes_id,
            no_id,
            bos_token: token_text(&config["bos_token"]),
            eos_token: token_text(&config["eos_token"]),
            tokenizer,
            template,
            reserved,
            image_context_id,
            image_tokens,
        })
    }

    /// Id of the token that ends the assistant's turn (a conversation template's separator,
    /// else the checkpoint's `eos_token`, else `<|im_end|>`), where rationale decoding stops.
    pub fn end_token_id(&self) -> Option<u32> {
        [
            self.template.stop_token().unwrap_or_default(),
            self.eos_token.as_str(),
            "<|im_end|>",
        ]
        .iter()
        .filter(|t| !t.is_empty())
        .find_map(|t| self.tokenizer.token_to_id(t))
    }

    /// Text of generated token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("decoding: {e}")))
    }

    /// The checkpoint's `(bos_token, eos_token)` texts (empty when not set).
    pub fn special_tokens(&self) -> (&str, &str) {
        (&self.bos_token, &self.eos_token)
    }

    /// Id of a token text, if the tokenizer has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of the image-context token.
    pub fn image_context_id(&self) -> u32 {
        self.image_context_id
    }

    /// Ids of the (yes, no) answer tokens.
    pub fn answer_ids(&self) -> (u32, u32) {
        (self.yes_id, self.no_id)
    }

    /// Ids of other (yes, no) answer tokens; each must be a single token.
    pub fn answer_ids_of(&self, answers: &AnswerTokens) -> Result<(u32, u32)> {
        Ok((
            single_token(&self.tokenizer, &answers.yes, "answer token")?,
            single_token(&self.tokenizer, &answers.no, "answer token")?,
        ))
    }

    /// Which chat template is in use, where it came from, and how its output is tokenised.
    pub fn template_source(&self) -> &TemplateSource {
        self.template.source()
    }

    /// The default instruction for `mode` and candidate kind.
    pub fn default_instruction(mode: Mode, video: bool) -> &'static str {
        match (mode, video) {
            (Mode::Pairwise, _) => PAIRWISE_INSTRUCTION,
            (Mode::Pointwise, false) => POINTWISE_IMAGE_INSTRUCTION,
            (Mode::Pointwise, true) => POINTWISE_VIDEO_INSTRUCTION,
        }
    }

    /// The user message with one image placeholder per image, in the order the images are
    /// fed to the model (pairwise: reference first; video: frames in order).
    pub fn user_content(&self, item: &ScoreItem) -> Result<String> {
        self.user_content_with(item, &Instructions::default())
    }

    /// [`Self::user_content`] with `defaults` for an item that has no instruction of its own.
    pub fn user_content_with(&self, item: &ScoreItem, defaults: &Instructions) -> Result<String> {
        let video_frames = match &item.candidate {
            Candidate::Image(_) => None,
            Candidate::Video(frames) => Some(frames.len()),
        };
        let instruction = item
            .instruction
            .as_deref()
            .unwrap_or_else(|| defaults.for_item(item.mode, video_frames.is_some()));
        if instruction.trim().is_empty() {
            return Err(Error::InvalidInput("instruction is empty".into()));
        }
        if instruction.contains("{prompt}") && item.prompt.trim().is_empty() {
            return Err(Error::InvalidInput(
                "prompt is empty, but the instruction needs one ({prompt})".into(),
            ));
        }
        for (what, text) in [
            ("prompt", item.prompt.as_str()),
            ("instruction", instruction),
        ] {
            if let Some(tok) = self.reserved.iter().find(|t| text.contains(t.as_str())) {
                return Err(Error::InvalidInput(format!(
                    "{what} contains the reserved token {tok:?}; remove it (it would inject a \
                     control token into the model's input)"
                )));
            }
        }
        // The check again on the text the model will read: a reserved token can be split across
        // the prompt and the instruction (`prompt = "<IMG_"`, `instruction = "{prompt}CONTEXT>"`).
        let instruction = instruction.replace("{prompt}", &item.prompt);
        if let Some(tok) = self
            .reserved
            .iter()
            .find(|t| instruction.contains(t.as_str()))
        {
            return Err(Error::InvalidInput(format!(
                "the instruction with the prompt substituted contains the reserved token {tok:?} \
                 (split across the prompt and the instruction); it would inject a control token \
                 into the model's input"
            )));
        }
        let image = self.image_tokens.placeholder;
        let images = match (item.mode, video_frames, item.reference.is_some()) {
            (Mode::Pointwise, _, true) => {
                return Err(Error::InvalidInput(
                    "a reference image was given in pointwise mode; use pairwise mode to compare \
                     against a reference"
                        .into(),
                ))
            }
            (Mode::Pairwise, _, false) => {
                return Err(Error::InvalidInput(
                    "pairwise mode needs a reference image (Image 1)".into(),
                ))
            }
            (Mode::Pairwise, Some(_), true) => {
                return Err(Error::InvalidInput(
                    "pairwise mode compares two images; score video candidates pointwise".into(),
                ))
            }
            (Mode::Pointwise, Some(0), _) => {
                return Err(Error::InvalidInput("video has no frames".into()))
            }
            (Mode::Pointwise, Some(n), false) => (1..=n)
                .map(|k| format!("Frame{k}: {image}\n"))
                .collect::<String>(),
            (Mode::Pointwise, None, false) => format!("{image}\n"),
            (Mode::Pairwise, None, true) => {
                format!("Image 1: {image}\nImage 2: {image}\n")
            }
        };
        Ok(images + &instruction)
    }

    /// Renders the chat template around one user message, ready for the assistant's answer.
    pub fn render(&self, user_content: &str) -> Result<String> {
        self.template
            .render(user_content, &self.bos_token, &self.eos_token)
    }

    /// Replaces the k-th placeholder by `<img>` + `tokens[k]` x `<IMG_CONTEXT>` + `</img>` and
    /// tokenises the result.
    pub fn tokenize(&self, rendered: &str, image_tokens: &[usize]) -> Result<Vec<u32>> {
        let ImageTokens {
            placeholder,
            start,
            context,
            end,
        } = self.image_tokens;
        let pieces: Vec<&str> = rendered.split(placeholder).collect();
        if pieces.len() != image_tokens.len() + 1 {
            return Err(Error::Template(format!(
                "the rendered prompt has {} image placeholders for {} images; the chat template \
                 must keep the user content verbatim",
                pieces.len() - 1,
                image_tokens.len()
            )));
        }
        let mut text =
            String::with_capacity(rendered.len() + 16 * image_tokens.iter().sum::<usize>());
        for (k, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            if let Some(&n) = image_tokens.get(k) {
                text.push_str(start);
                for _ in 0..n {
                    text.push_str(context);
                }
                text.push_str(end);
            }
        }
        let enc = self
            .tokenizer
            .encode(text, self.template.add_special_tokens())
            .map_err(|e| Error::Tokenizer(format!("encoding the prompt: {e}")))?;
        let ids = enc.get_ids().to_vec();
        // Whatever the text did, the ids must hold exactly one image-context token per feature,
        // or the item would fail its whole batch at the splice.
        let expected: usize = image_tokens.iter().sum();
        let found = ids
            .iter()
            .filter(|&&id| id == self.image_context_id)
            .count();
        if found != expected {
            return Err(Error::InvalidInput(format!(
                "the prompt tokenises to {found} {context} tokens for {expected} image features; \
                 the text must not form image tokens"
            )));
        }
        Ok(ids)
    }
}

/// The id of `text` when the tokenizer encodes it as exactly one token.
fn single_token(tokenizer: &Tokenizer, text: &str, what: &str) -> Result<u32> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| Error::Tokenizer(format!("encoding {what} {text:?}: {e}")))?;
    match enc.get_ids() {
        [id] => Ok(*id),
        ids => Err(Error::Tokenizer(format!(
            "{what} {text:?} must be a single token, but the tokenizer gives {} tokens {ids:?}",
            ids.len()
        ))),
    }
}
