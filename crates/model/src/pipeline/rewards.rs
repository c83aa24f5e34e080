//! Named rewards: several reward models on one base checkpoint, chosen per item.
//!
//! A reward is a name plus what it changes: a LoRA adapter (peft's format), the instructions
//! (pointwise / pairwise / video, with `{prompt}`), the answer tokens and the default mode.
//! A rewards file declares them, one TOML table each, paths relative to the file:
//!
//! ```toml
//! [rewards.aesthetic]
//! adapter = "adapters/aesthetic"
//! instruction = "Is the image generated from '{prompt}' beautiful? Answer yes or no."
//!
//! [rewards.alignment]          # the base model with its default instructions
//! ```
//!
//! Without a file there is one reward, [`DEFAULT_REWARD`]: the base model (with
//! `LoadOptions::adapter` merged, if set) and the default instructions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
pub use crate::info::RewardInfo;
use crate::item::Mode;
use crate::text::prompt::{AnswerTokens, Instructions};

/// The name of the one reward a model has without a rewards file.
pub const DEFAULT_REWARD: &str = "default";

/// Most rewards one model may declare (each is a metric label value).
pub const MAX_REWARDS: usize = 64;

/// One declared reward.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    /// Its name: 1-64 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// A LoRA adapter directory.
    pub adapter: Option<PathBuf>,
    /// Instructions replacing the defaults (each unset one keeps the default).
    pub instructions: Instructions,
    /// Answer tokens replacing the model's.
    pub answers: Option<AnswerTokens>,
    /// The mode of items that leave it unspecified.
    pub mode: Option<Mode>,
}

impl RewardSpec {
    /// The base model as it is: no adapter, default instructions and answers.
    pub fn named(name: &str) -> Self {
        RewardSpec {
            name: name.into(),
            adapter: None,
            instructions: Instructions::default(),
            answers: None,
            mode: None,
        }
    }
}

/// A table of a rewards file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardTable {
    adapter: Option<PathBuf>,
    instruction: Option<String>,
    pairwise_instruction: Option<String>,
    video_instruction: Option<String>,
    answer_yes: Option<String>,
    answer_no: Option<String>,
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardsFile {
    /// Keyed with their place in the file: rewards keep the file's order.
    rewards: BTreeMap<toml::Spanned<String>, RewardTable>,
}

/// Parses a rewards file's text; relative adapter paths are taken from `base_dir`.
pub fn parse_rewards(text: &str, base_dir: &Path) -> Result<Vec<RewardSpec>> {
    let file: RewardsFile =
        toml::from_str(text).map_err(|e| Error::InvalidInput(format!("rewards file: {e}")))?;
    if file.rewards.is_empty() {
        return Err(Error::InvalidInput(
            "rewards file declares no reward ([rewards.NAME] tables)".into(),
        ));
    }
    let mut tables: Vec<(toml::Spanned<String>, RewardTable)> = file.rewards.into_iter().collect();
    tables.sort_by_key(|(name, _)| name.span().start);
    let specs = tables
        .into_iter()
        .map(|(name, t)| {
            let name = name.into_inner();
            let fail = |m: String| Error::InvalidInput(format!("reward {name:?}: {m}"));
            let answers = match (t.answer_yes, t.answer_no) {
                (None, None) => None,
                (yes, no) => Some(AnswerTokens {
                    yes: yes.unwrap_or_else(|| AnswerTokens::DEFAULT_YES.into()),
                    no: no.unwrap_or_else(|| AnswerTokens::DEFAULT_NO.into()),
                }),
            };
            let mode = t
                .mode
                .map(|m| m.parse::<Mode>().map_err(|e| fail(e.to_string())))
                .transpose()?;
            Ok(RewardSpec {
                adapter: t.adapter.map(|p| base_dir.join(p)),
                instructions: Instructions {
                    pointwise: t.instruction,
                    pairwise: t.pairwise_instruction,
                    video: t.video_instruction,
                },
                answers,
                mode,
                name,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    check_names(&specs)?;
    Ok(specs)
}

/// Reads a rewards file (adapter paths relative to it).
pub fn read_rewards(path: &Path) -> Result<Vec<RewardSpec>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidInput(format!("rewards file {}: {e}", path.display())))?;
    parse_rewards(&text, path.parent().unwrap_or(Path::new(".")))
}

/// The indices of `names` among the `declared` reward names, in the order named; an unknown
/// or repeated name is refused with a message that names it. No names: no indices.
pub fn reward_indices<S: AsRef<str>>(
    names: &[String],
    declared: &[S],
) -> std::result::Result<Vec<usize>, String> {
    let mut indices = Vec::with_capacity(names.len());
    for name in names {
        let index = declared
            .iter()
            .position(|d| d.as_ref() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = declared.iter().map(AsRef::as_ref).collect();
                format!(
                    "unknown reward {name:?} (the rewards are {})",
                    known.join(", ")
                )
            })?;
        if indices.contains(&index) {
            return Err(format!("reward {name:?} is named twice"));
        }
        indices.push(index);
    }
    Ok(indices)
}

/// Names are unique, at most [`MAX_REWARDS`], and safe as metric labels.
pub fn check_names(specs: &[RewardSpec]) -> Result<()> {
    if specs.is_empty() || specs.len() > MAX_REWARDS {
        return Err(Error::InvalidInput(format!(
            "{} rewards declared (1 to {MAX_REWARDS} allowed)",
            specs.len()
        )));
    }
    for (i, s) in specs.iter().enumerate() {
        let ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(Error::InvalidInput(format!(
                "reward name {:?} is not 1-64 characters of [A-Za-z0-9_.-]",
                s.name
            )));
        }
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(Error::InvalidInput(format!(
                "reward {:?} is declared twice",
                s.name
            )));
        }
    }
    Ok(())
}

/// A reward as a loaded model serves it.
#[derive(Debug, Clone)]
pub struct Reward {
    /// Its declaration.
    pub spec: RewardSpec,
    /// The `(yes, no)` answer token ids.
    pub answer_ids: (u32, u32),
    /// The unmerged adapter slot it runs with (`None`: the weights as loaded).
    pub slot: Option<usize>,
    /// [`Self::slot`] when that adapter also changes the image side (vision encoder or
    /// projector): its image features are its own, not the base's.
    pub image_slot: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewards_file_declares_named_rewards() {
        let specs = parse_rewards(
            r#"
            [rewards.zeta]

            [rewards.aesthetic]
            adapter = "adapters/aesthetic"
            instruction = "Is '{prompt}' beautiful?"
            answer_yes = "Yes"
            mode = "pairwise"

            [rewards.base]
            "#,
            Path::new("/etc/rd"),
        )
        .expect("parses");
        // The file's order (the first is the default), not the names'.
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zeta", "aesthetic", "base"]);
        let specs = &specs[1..];
        assert_eq!(specs[0].name, "aesthetic");
        assert_eq!(
            specs[0].adapter.as_deref(),
            Some(Path::new("/etc/rd/adapters/aesthetic"))
        );
        assert_eq!(specs[0].answers.as_ref().unwrap().no, "no");
        assert_eq!(specs[0].mode, Some(Mode::Pairwise));
        assert_eq!(specs[1], RewardSpec::named("base"));
    }

    #[test]
    fn bad_files_are_refused_by_what_is_wrong() {
        for (text, what) in [
            ("", "rewards"),
            ("[rewards]", "no reward"),
            ("[rewards.a]\nadaptor = \"x\"", "adaptor"),
            ("[rewards.a]\nmode = \"sideways\"", "sideways"),
            ("[rewards.\"a b\"]", "A-Za-z0-9"),
        ] {
            let err = parse_rewards(text, Path::new(".")).expect_err(text);
            assert!(err.to_string().contains(what), "{text}: {err}");
        }
        let twice = [RewardSpec::named("a"), RewardSpec::named("a")];
        assert!(check_names(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
