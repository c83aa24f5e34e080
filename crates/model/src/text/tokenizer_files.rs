//! Pieces shared by the tokenizer conversions ([`crate::text::bpe_vocab`], [`crate::text::sentencepiece`])
//! and the prompt builder: reading `tokenizer_config.json`, and checking a converted tokenizer.

use serde_json::Value;

use crate::error::{Error, Result};

/// Parses an optional JSON file's text (`Null` when the checkpoint has no such file).
pub(crate) fn json_or_null(name: &str, text: Option<&str>) -> Result<Value> {
    match text {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| Error::Tokenizer(format!("{name}: {e}")))
        }
        None => Ok(Value::Null),
    }
}

/// One `added_tokens_decoder` entry: its id, its JSON object, and its `content`.
pub(crate) type AddedTokenEntry<'a> = (usize, &'a Value, &'a str);

/// `tokenizer_config.json`'s `added_tokens_decoder` as `(id, entry, content)`, or `None` when it
/// has none; an id that is not a number or an entry without `content` is an error.
pub(crate) fn added_tokens_decoder(config: &Value) -> Result<Option<Vec<AddedTokenEntry<'_>>>> {
    let Some(decoder) = config["added_tokens_decoder"].as_object() else {
        return Ok(None);
    };
    decoder
        .iter()
        .map(|(id, t)| {
            let id: usize = id.parse().map_err(|_| {
                Error::Tokenizer(format!("tokenizer_config.json: added token id {id:?}"))
            })?;
            let content = t["content"].as_str().ok_or_else(|| {
                Error::Tokenizer(format!(
                    "tokenizer_config.json: added token {id} has no content"
                ))
            })?;
            Ok((id, t, content))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Serialises a converted `tokenizer.json`, loads it back, and checks that every added token
/// landed on its declared id (`tokenizers` would otherwise renumber silently).
pub(crate) fn serialise_checked(tokenizer: &Value, added: &[Value], what: &str) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(tokenizer)
        .map_err(|e| Error::Tokenizer(format!("serialising the converted tokenizer: {e}")))?;
    let built = tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| Error::Tokenizer(format!("{what}: {e}")))?;
    for t in added {
        if let (Some(content), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
            let got = built.token_to_id(content);
            if got != Some(id as u32) {
                return Err(Error::Tokenizer(format!(
                    "{what}: added token {content:?} should have id {id}, the converted tokenizer \
                     gives {got:?}"
                )));
            }
        }
    }
    Ok(bytes)
}
