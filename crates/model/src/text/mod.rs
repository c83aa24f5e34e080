//! Text in and out, shared by every family: tokenizers (converted at load when a checkpoint has
//! no `tokenizer.json`), chat templates, and the prompt an item becomes.
//!
//! - [`prompt`]: instructions, rendering, image-token expansion, tokenisation
//! - [`chat_template`]: picks and renders the checkpoint's template ([`conversation`]:
//!   OpenGVLab's `conversation.py` templates)
//! - [`bpe_vocab`]: Qwen2 `vocab.json` + `merges.txt`; [`sentencepiece`]: `tokenizer.model`

pub mod bpe_vocab;
pub mod chat_template;
pub mod conversation;
pub mod prompt;
pub mod sentencepiece;
pub(crate) mod tokenizer_files;
