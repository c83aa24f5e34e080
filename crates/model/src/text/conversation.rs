//! OpenGVLab's conversation templates: what `InternVLChatModel.chat()` builds its prompt with
//! (`get_conv_template(config.template)` in `internvl_chat/internvl/conversation.py` of
//! github.com/OpenGVLab/InternVL, the same file every OpenGVLab-layout checkpoint ships).
//!
//! Only the templates InternVL 2 / 2.5 / 3 checkpoints name are here, all in the file's `MPT`
//! separator style. Their strings are copied character for character from that file and checked
//! against prompts it renders itself (`crates/model/tests/conversation_templates.rs`, references
//! written by `tools/conformance/conversation_templates.py`), so a typo cannot hide.

/// One conversation template (`Conversation` in `conversation.py`, `SeparatorStyle.MPT`).
#[derive(Debug, PartialEq, Eq)]
pub struct Conversation {
    /// Name as `config.json`'s `template` spells it.
    pub name: &'static str,
    /// `system_template`: `{system_message}` is replaced by the system message.
    pub system_template: &'static str,
    /// The template's own `system_message` (used unless `config.json` sets `system_message`).
    pub system_message: &'static str,
    /// `roles`: the user and assistant turn openers.
    pub roles: [&'static str; 2],
    /// `sep`: closes the system prompt and every finished turn.
    pub sep: &'static str,
}

/// The system message of the InternVL 1.5 / 2 era templates (`Hermes-2`, `internlm2-chat`,
/// `phi3-chat`).
const INTERNVL2_SYSTEM: &str = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";

/// Every template this crate can render, by name.
pub const CONVERSATIONS: [Conversation; 4] = [
    Conversation {
        name: "Hermes-2",
        system_template: "<|im_start|>system\n{system_message}",
        system_message: INTERNVL2_SYSTEM,
        roles: ["<|im_start|>user\n", "<|im_start|>assistant\n"],
        sep: "<|im_end|>",
    },
    Conversation {
        name: "internlm2-chat",
        system_template: "<|im_start|>system\n{system_message}",
        system_message: INTERNVL2_SYSTEM,
        roles: ["<|im_start|>user\n", "<|im_start|>assistant\n"],
        sep: "<|im_end|>",
    },
    Conversation {
        name: "phi3-chat",
        system_template: "<|system|>\n{system_message}",
        system_message: INTERNVL2_SYSTEM,
        roles: ["<|user|>\n", "<|assistant|>\n"],
        sep: "<|end|>",
    },
    Conversation {
        name: "internvl2_5",
        system_template: "<|im_start|>system\n{system_message}",
        system_message: "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
        roles: ["<|im_start|>user\n", "<|im_start|>assistant\n"],
        sep: "<|im_end|>\n",
    },
];

/// The template called `name`, if this crate knows it.
pub fn find(name: &str) -> Option<&'static Conversation> {
    CONVERSATIONS.iter().find(|c| c.name == name)
}

/// Names of every known template, for error messages.
pub fn known_names() -> Vec<&'static str> {
    CONVERSATIONS.iter().map(|c| c.name).collect()
}

impl Conversation {
    /// `get_prompt()` after `append_message(user, content)` and `append_message(assistant,
    /// None)`: the system prompt, one user turn, and the open assistant turn.
    pub fn render(&self, system_message: &str, user_content: &str) -> String {
        let system = self
            .system_template
            .replace("{system_message}", system_message);
        let [user, assistant] = self.roles;
        let sep = self.sep;
        // As `get_prompt`: a turn whose message is empty (falsy in Python) is the role alone.
        let user_turn = if user_content.is_empty() {
            user.to_string()
        } else {
            format!("{user}{user_content}{sep}")
        };
        format!("{system}{sep}{user_turn}{assistant}")
    }

    /// The token that ends the assistant's turn (`chat()` stops at `sep.strip()`).
    pub fn stop_token(&self) -> &'static str {
        self.sep.trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for c in &CONVERSATIONS {
            assert_eq!(find(c.name), Some(c));
        }
        assert!(find("internvl2-5").is_none());
    }

    #[test]
    fn internvl2_5_renders_the_mpt_style() {
        let c = find("internvl2_5").unwrap();
        assert_eq!(
            c.render("S", "<image>\nQ"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<image>\nQ<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(c.stop_token(), "<|im_end|>");
    }
}
