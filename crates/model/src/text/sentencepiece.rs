//! SentencePiece `tokenizer.model` loading: InternLM2.5 checkpoints often ship only the
//! SentencePiece model, no `tokenizer.json`. It is converted at load time into a `tokenizers`
//! pipeline equivalent to the slow `InternLM2Tokenizer` (and to `InternLM2Converter`):
//!
//! - model: BPE over every piece (id = piece index) with byte fallback; merges are every split
//!   `(a, b)` of a normal piece into two known pieces, ranked by the piece's score (SentencePiece
//!   BPE merges the highest-scoring piece first);
//! - normaliser: `▁` prepended when `add_dummy_prefix`, spaces replaced by `▁`. It applies to each
//!   stretch of text between added tokens, as `sp_model.encode` does per chunk in the slow tokenizer;
//! - added tokens: `tokenizer_config.json`'s `added_tokens_decoder` (InternVL's `<img>`,
//!   `<IMG_CONTEXT>`, ... after the SentencePiece vocabulary), else the model's control and
//!   user-defined pieces. An added token whose id is already a piece *renames* it, as the real
//!   InternLM2 checkpoints do (`[UNUSED_TOKEN_141]` at 92538 becomes `<|plugin|>`): the added
//!   token's content encodes to that id and is what the id decodes to, as in `InternLM2Tokenizer`
//!   (transformers' added-token table wins over `sp_model` both ways). The old text keeps the id
//!   where SentencePiece itself would still produce it: a user-defined piece is matched by
//!   `sp_model.encode` inside any chunk (done here with a `Replace` normaliser to the new
//!   content), and a normal piece stays reachable by its merges;
//! - pieces SentencePiece never emits (type `UNUSED`, and a `\0` piece when byte fallback is on,
//!   which `sentencepiece` demotes to unused at load) keep their ids but cannot match text;
//! - post-processor: `<s>` first when `add_bos_token` (default true), `</s>` last when `add_eos_token`.
//!
//! The `ModelProto` is read with a small protobuf decoder: only the fields used here.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::text::tokenizer_files::{added_tokens_decoder, json_or_null, serialise_checked};

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// A learned piece.
    Normal,
    /// `<unk>`.
    Unknown,
    /// Control symbols (`<s>`, `</s>`): never produced from text by SentencePiece.
    Control,
    /// User-defined symbols: always one piece.
    UserDefined,
    /// Unused.
    Unused,
    /// Byte-fallback pieces `<0x00>` .. `<0xFF>`.
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The piece text (`▁` for spaces).
    pub piece: String,
    /// Merge priority (higher first).
    pub score: f32,
    /// Piece type.
    pub kind: PieceType,
}

/// The parts of a SentencePiece `ModelProto` the conversion needs.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    /// Vocabulary in id order.
    pub pieces: Vec<Piece>,
    /// `trainer_spec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `trainer_spec.byte_fallback`.
    pub byte_fallback: bool,
    /// `trainer_spec.treat_whitespace_as_suffix`.
    pub whitespace_as_suffix: bool,
    /// `normalizer_spec.name` (e.g. `identity`, `nmt_nfkc`).
    pub normalizer: String,
    /// Whether `normalizer_spec.precompiled_charsmap` is non-empty.
    pub has_charsmap: bool,
    /// `normalizer_spec.add_dummy_prefix`.
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
    /// `normalizer_spec.escape_whitespaces`.
    pub escape_whitespaces: bool,
}

impl SentencePieceModel {
    /// Decodes a serialized `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut model = SentencePieceModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            whitespace_as_suffix: false,
            normalizer: String::new(),
            has_charsmap: false,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        for field in Fields::new(bytes) {
            match field? {
                (1, Wire::Bytes(b)) => model.pieces.push(parse_piece(b)?),
                (2, Wire::Bytes(b)) => {
                    for f in Fields::new(b) {
                        match f? {
                            (3, Wire::Varint(v)) => model.model_type = v,
                            (24, Wire::Varint(v)) => model.whitespace_as_suffix = v != 0,
                            (35, Wire::Varint(v)) => model.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Wire::Bytes(b)) => {
                    for f in Fields::new(b) {
                        match f? {
                            (1, Wire::Bytes(s)) => model.normalizer = utf8(s)?,
                            (2, Wire::Bytes(s)) => model.has_charsmap = !s.is_empty(),
                            (3, Wire::Varint(v)) => model.add_dummy_prefix = v != 0,
                            (4, Wire::Varint(v)) => model.remove_extra_whitespaces = v != 0,
                            (5, Wire::Varint(v)) => model.escape_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err(bad("no pieces (is this a SentencePiece model?)"));
        }
        Ok(model)
    }

    /// Pieces `sentencepiece` never produces from text: type `UNUSED`, and a `\0` piece when
    /// byte fallback is on (its loader demotes that one to unused).
    fn never_emitted(&self, p: &Piece) -> bool {
        p.kind == PieceType::Unused || (self.byte_fallback && p.piece == "\0")
    }

    /// Checks that the conversion reproduces SentencePiece exactly for this model.
    fn check_supported(&self) -> Result<()> {
        let refuse = |what: String| {
            Err(Error::Tokenizer(format!(
                "tokenizer.model: {what} is not supported by the built-in SentencePiece conversion \
                 (InternLM2-style BPE with identity normalisation); provide a tokenizer.json"
            )))
        };
        if self.model_type != 2 {
            return refuse(format!("model type {} (only BPE = 2)", self.model_type));
        }
        if self.has_charsmap || !matches!(self.normalizer.as_str(), "" | "identity") {
            return refuse(format!("normaliser {:?}", self.normalizer));
        }
        if self.remove_extra_whitespaces {
            return refuse("remove_extra_whitespaces".into());
        }
        if self.whitespace_as_suffix {
            return refuse("treat_whitespace_as_suffix".into());
        }
        Ok(())
    }
}

/// Converts `tokenizer.model` (+ `tokenizer_config.json`) into `tokenizer.json` bytes for the
/// `tokenizers` crate.
pub fn tokenizer_json(model_bytes: &[u8], tokenizer_config_json: Option<&str>) -> Result<Vec<u8>> {
    let model = SentencePieceModel::parse(model_bytes)?;
    model.check_supported()?;
    let config = json_or_null("tokenizer_config.json", tokenizer_config_json)?;
    let id_of = |text: &str| model.pieces.iter().position(|p| p.piece == text);
    let unk = model
        .pieces
        .iter()
        .find(|p| p.kind == PieceType::Unknown)
        .map(|p| p.piece.clone());

    let mut vocab = Map::new();
    for (i, p) in model.pieces.iter().enumerate() {
        // A key no text reaches: single characters are the only keys BPE starts from, and no
        // merge produces this one.
        let key = if model.never_emitted(p) {
            format!("<never emitted piece {i}>")
        } else {
            p.piece.clone()
        };
        vocab.entry(key).or_insert(json!(i));
    }
    let mut ranked: Vec<(usize, &Piece)> = model.pieces.iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
    let mut merges = Vec::new();
    for (_, p) in ranked
        .iter()
        .filter(|(_, p)| p.kind == PieceType::Normal && !model.never_emitted(p))
    {
        let mut splits: Vec<(&str, &str)> = p
            .piece
            .char_indices()
            .skip(1)
            .map(|(k, _)| p.piece.split_at(k))
            .filter(|(a, b)| vocab.contains_key(*a) && vocab.contains_key(*b))
            .collect();
        splits.sort();
        merges.extend(splits.into_iter().map(|(a, b)| json!([a, b])));
    }

    let (added, renames) = added_tokens(&model, &config)?;
    let mut normalizers = Vec::new();
    // Every added token also enters the model's vocabulary at its id (a renamed piece keeps its
    // old key too), so each lands on its declared id: `tokenizers` numbers an added token it
    // cannot find from the vocabulary's key count. No merge produces these keys.
    for t in &added {
        if let (Some(content), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
            vocab.entry(content.to_string()).or_insert(json!(id));
        }
    }
    for r in &renames {
        if model.pieces[r.id].kind == PieceType::UserDefined {
            normalizers.push(json!({"type": "Replace", "pattern": {"String": model.pieces[r.id].piece}, "content": r.content}));
        }
    }
    if model.add_dummy_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    if model.escape_whitespaces {
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    }
    let flag = |key: &str, default: bool| config[key].as_bool().unwrap_or(default);
    let token_text = |key: &str, default: &str| -> String {
        let v = &config[key];
        v.as_str()
            .or_else(|| v["content"].as_str())
            .unwrap_or(default)
            .to_string()
    };
    let mut special = Map::new();
    let mut single = Vec::new();
    for (on, key, default, seq_first) in [
        (flag("add_bos_token", true), "bos_token", "<s>", true),
        (flag("add_eos_token", false), "eos_token", "</s>", false),
    ] {
        if !on {
            continue;
        }
        let text = token_text(key, default);
        let id = added
            .iter()
            .find(|t| t["content"] == text.as_str())
            .and_then(|t| t["id"].as_u64())
            .or_else(|| id_of(&text).map(|i| i as u64))
            .ok_or_else(|| Error::Tokenizer(format!("{key} {text:?} is not in the vocabulary")))?;
        special.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
        let tok = json!({"SpecialToken": {"id": text, "type_id": 0}});
        if seq_first {
            single.push(tok);
            single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        } else {
            if single.is_empty() {
                single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
            }
            single.push(tok);
        }
    }
    let post_processor = if single.is_empty() {
        Value::Null
    } else {
        let mut pair = single.clone();
        pair.extend(single.iter().map(|t| {
            let mut t = t.clone();
            if let Some(s) = t.get_mut("Sequence") {
                s["id"] = json!("B");
            }
            for v in t.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                v["type_id"] = json!(1);
            }
            t
        }));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": model.byte_fallback,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    serialise_checked(&tokenizer, &added, "converted tokenizer.model")
}

/// An added token that takes over a piece's id (`added_tokens_decoder` naming an id of
/// `tokenizer.model` with another text).
struct Rename {
    id: usize,
    content: String,
}

/// Added tokens in id order, as `tokenizers` JSON entries, and the pieces they rename.
fn added_tokens(model: &SentencePieceModel, config: &Value) -> Result<(Vec<Value>, Vec<Rename>)> {
    let entry = |id: usize, content: &str, special: bool, normalized: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": normalized, "special": special})
    };
    let mut out: Vec<(usize, Value)> = Vec::new();
    let mut renames = Vec::new();
    if let Some(decoder) = added_tokens_decoder(config)? {
        for (id, t, content) in decoder {
            // A renamed user-defined piece is matched after the `Replace` normaliser that maps
            // its old text to `content`, so it sits in the normalised added-token trie.
            let renamed = id < model.pieces.len() && model.pieces[id].piece != content;
            let normalized = renamed
                && model.pieces[id].kind == PieceType::UserDefined
                && !content.contains(' ');
            if renamed {
                renames.push(Rename {
                    id,
                    content: content.to_string(),
                });
            }
            out.push((
                id,
                entry(
                    id,
                    content,
                    t["special"].as_bool().unwrap_or(true),
                    normalized,
                ),
            ));
        }
    } else {
        for (id, p) in model.pieces.iter().enumerate() {
            if matches!(p.kind, PieceType::Control | PieceType::Unknown) {
                out.push((id, entry(id, &p.piece, true, false)));
            }
        }
    }
    // SentencePiece never splits a user-defined piece.
    for (id, p) in model.pieces.iter().enumerate() {
        if p.kind == PieceType::UserDefined && !out.iter().any(|(i, _)| *i == id) {
            out.push((id, entry(id, &p.piece, false, false)));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok((out.into_iter().map(|(_, v)| v).collect(), renames))
}

fn parse_piece(bytes: &[u8]) -> Result<Piece> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    for f in Fields::new(bytes) {
        match f? {
            (1, Wire::Bytes(b)) => piece.piece = utf8(b)?,
            (2, Wire::Fixed32(v)) => piece.score = f32::from_bits(v),
            (3, Wire::Varint(v)) => {
                piece.kind = match v {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    other => return Err(bad(&format!("unknown piece type {other}"))),
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn utf8(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

fn bad(what: &str) -> Error {
    Error::Tokenizer(format!("tokenizer.model: {what}"))
}

/// A protobuf field value (wire types 0, 1, 2 and 5).
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterator over the (field number, value) pairs of one protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, failed: false }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(bad("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u64, Wire<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(bad(&format!("unsupported wire type {w}"))),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let item = self.field();
        self.failed = item.is_err();
        Some(item)
    }
}
