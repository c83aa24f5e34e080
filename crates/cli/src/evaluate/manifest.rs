//! Inputs of a batch evaluation: JSONL manifest rows or the images of a directory.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rewarddance_model::{Candidate, ImageInput, Mode, ScoreItem};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::failure::ItemFailure;

/// Fields that output rows write themselves: a manifest row may not carry one through (a
/// `"p_yes"` copied from the input would make a failed row look scored).
pub const OUTPUT_FIELDS: [&str; 7] = [
    "p_yes",
    "p_yes_vocab",
    "logit_yes",
    "logit_no",
    "rationale",
    "error",
    "reason",
];

/// One manifest line. Paths are relative to the manifest's directory. Fields besides these
/// are carried through to the row's output line unchanged.
#[derive(Debug, Deserialize)]
pub struct Row {
    /// Generation prompt.
    pub prompt: String,
    /// Candidate image path (or use `frames`).
    pub image: Option<String>,
    /// Video frame paths, in order (instead of `image`).
    pub frames: Option<Vec<String>>,
    /// Reference image path: makes the row pairwise unless `mode` says otherwise.
    pub reference: Option<String>,
    /// Instruction override (`{prompt}` is substituted).
    pub instruction: Option<String>,
    /// `pointwise` or `pairwise`.
    pub mode: Option<String>,
    /// Named rewards to score the row with (a model's `--rewards`, or the server's), in
    /// order: the output line gets a `rewards` object with one entry per name, and its
    /// top-level score is the first's.
    pub rewards: Option<Vec<String>>,
}

/// The fields [`Row`] reads (the rest of a line is carried through).
const ROW_FIELDS: [&str; 8] = [
    "id",
    "prompt",
    "image",
    "frames",
    "reference",
    "instruction",
    "mode",
    "rewards",
];

/// A unit of work: the id to report and the row to score (or why the row is unusable).
#[derive(Debug)]
pub struct Job {
    /// The id as text: a string id, a numeric id's JSON text, or `#<line number>`. Output
    /// lines are matched to rows by it (`--resume`).
    pub id: String,
    /// What the output line starts from: `"id"` as the manifest gave it (a number stays a
    /// number) and the row's other, unknown fields.
    pub echo: Map<String, Value>,
    /// The parsed row, or why this line cannot be scored.
    pub row: std::result::Result<Row, ItemFailure>,
    /// Directory that relative paths are resolved against.
    pub base: PathBuf,
}

impl Job {
    /// The reward names the row gives (none: the model's first reward, no `rewards` object).
    pub fn reward_names(&self) -> &[String] {
        self.row
            .as_ref()
            .ok()
            .and_then(|r| r.rewards.as_deref())
            .unwrap_or(&[])
    }

    /// Reads the files the row names and builds the item; any problem is this row's failure.
    pub fn load(&self) -> std::result::Result<ScoreItem, ItemFailure> {
        let row = self.row.as_ref().map_err(Clone::clone)?;
        let read = |p: &String| -> std::result::Result<ImageInput, ItemFailure> {
            let path = self.base.join(p);
            std::fs::read(&path)
                .map(ImageInput::Encoded)
                .map_err(|e| ItemFailure::unreadable(&path, &e))
        };
        let candidate = match (&row.image, &row.frames) {
            (Some(img), None) => Candidate::Image(read(img)?),
            (None, Some(frames)) => {
                Candidate::Video(frames.iter().map(read).collect::<Result<_, _>>()?)
            }
            _ => {
                return Err(ItemFailure::invalid_input(
                    "a row needs exactly one of \"image\" or \"frames\"",
                ))
            }
        };
        let mode = match &row.mode {
            Some(m) => m
                .parse::<Mode>()
                .map_err(|e| ItemFailure::invalid_input(e.to_string()))?,
            None if row.reference.is_some() => Mode::Pairwise,
            None => Mode::Pointwise,
        };
        Ok(ScoreItem {
            prompt: row.prompt.clone(),
            candidate,
            reference: row.reference.as_ref().map(read).transpose()?,
            instruction: row.instruction.clone(),
            mode,
        })
    }
}

/// The id key of an output or manifest `"id"` value: strings as they are, numbers as their JSON
/// text; `None` for anything else.
pub fn id_key(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one non-blank manifest line (1-based `line_no`) into a job.
fn parse_line(line: &str, line_no: usize, base: &Path) -> Job {
    let fallback = format!("#{line_no}");
    let job = |id: String, echo: Map<String, Value>, row| Job {
        id,
        echo,
        row,
        base: base.to_path_buf(),
    };
    let id_only = |id: &Value| Map::from_iter([("id".to_string(), id.clone())]);
    let mut object = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => o,
        Ok(other) => {
            let why = ItemFailure::bad_row(format!("expected a JSON object, found {other}"));
            return job(fallback.clone(), id_only(&fallback.into()), Err(why));
        }
        Err(e) => {
            return job(
                fallback.clone(),
                id_only(&fallback.into()),
                Err(ItemFailure::bad_row(e)),
            )
        }
    };
    let given = object.get("id").filter(|v| !v.is_null()).cloned();
    let (id, id_value) = match &given {
        None => (fallback.clone(), Value::String(fallback)),
        Some(v) => match id_key(v) {
            Some(key) => (key, v.clone()),
            None => {
                let why = ItemFailure::bad_row("\"id\" must be a string or a number");
                return job(fallback.clone(), id_only(&fallback.into()), Err(why));
            }
        },
    };
    if let Some(field) = OUTPUT_FIELDS.iter().find(|f| object.contains_key(**f)) {
        let why = ItemFailure::invalid_input(format!(
            "field \"{field}\" is written by the output itself; rename it in the manifest"
        ));
        return job(id, id_only(&id_value), Err(why));
    }
    let mut echo = id_only(&id_value);
    let known: Map<String, Value> = ROW_FIELDS
        .iter()
        .filter_map(|f| object.remove(*f).map(|v| (f.to_string(), v)))
        .collect();
    echo.extend(object);
    let row = Row::deserialize(Value::Object(known)).map_err(ItemFailure::bad_row);
    job(id, echo, row)
}

/// Streams the jobs of a JSONL manifest; blank lines are skipped, bad lines become failing jobs.
pub fn manifest_jobs(path: &Path) -> Result<impl Iterator<Item = Job>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let lines = std::io::BufReader::new(file).lines().enumerate();
    Ok(lines.filter_map(move |(n, line)| match line {
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => Some(parse_line(&l, n + 1, &base)),
        Err(e) => {
            let id = format!("#{}", n + 1);
            Some(Job {
                echo: Map::from_iter([("id".to_string(), Value::String(id.clone()))]),
                id,
                row: Err(ItemFailure::bad_row(format!("reading line: {e}"))),
                base: base.clone(),
            })
        }
    }))
}

/// One pointwise job per image file (png, jpg, jpeg, webp) in `dir`, sorted by name; the id is
/// the file name.
pub fn directory_jobs(dir: &Path, prompt: &str, instruction: Option<&str>) -> Result<Vec<Job>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            [".png", ".jpg", ".jpeg", ".webp"]
                .iter()
                .any(|ext| lower.ends_with(ext))
        })
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| Job {
            id: name.clone(),
            echo: Map::from_iter([("id".to_string(), Value::String(name.clone()))]),
            row: Ok(Row {
                prompt: prompt.to_string(),
                image: Some(name),
                frames: None,
                reference: None,
                instruction: instruction.map(String::from),
                mode: None,
                rewards: None,
            }),
            base: dir.to_path_buf(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_carried_and_numeric_ids_accepted() {
        let job = parse_line(
            r#"{"id":12,"prompt":"p","image":"a.png","seed":42}"#,
            3,
            Path::new("."),
        );
        assert_eq!(job.id, "12");
        assert_eq!(
            Value::Object(job.echo),
            serde_json::json!({"id": 12, "seed": 42})
        );
        assert_eq!(job.row.unwrap().image.as_deref(), Some("a.png"));
    }

    #[test]
    fn bad_lines_keep_the_callers_id_when_there_is_one() {
        let job = parse_line(r#"{"id":"x","image":"a.png"}"#, 3, Path::new("."));
        assert_eq!(job.id, "x");
        assert_eq!(job.row.unwrap_err().reason, "bad_row");
        let job = parse_line(r#"{"id":[1],"prompt":"p"}"#, 4, Path::new("."));
        assert_eq!(job.id, "#4");
        let job = parse_line("[1, 2]", 5, Path::new("."));
        assert_eq!(
            (job.id.as_str(), job.row.unwrap_err().reason.as_str()),
            ("#5", "bad_row")
        );
    }
}
