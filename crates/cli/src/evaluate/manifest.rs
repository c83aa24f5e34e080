//! Inputs of a batch evaluation: JSONL manifest rows or the images of a directory.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rewarddance_model::{Candidate, ImageInput, Mode, ScoreItem};
use serde::Deserialize;

/// One manifest line. Paths are relative to the manifest's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Caller's id, echoed in the output (default: `#<line number>`).
    pub id: Option<String>,
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
}

/// A unit of work: the id to report and the row to score (or why the row is unusable).
#[derive(Debug)]
pub struct Job {
    /// Id echoed in the output.
    pub id: String,
    /// The parsed row, or the parse error for this line.
    pub row: std::result::Result<Row, String>,
    /// Directory that relative paths are resolved against.
    pub base: PathBuf,
}

impl Job {
    /// Reads the files the row names and builds the item; any problem is this row's error.
    pub fn load(&self) -> std::result::Result<ScoreItem, String> {
        let row = self.row.as_ref().map_err(Clone::clone)?;
        let read = |p: &String| -> std::result::Result<ImageInput, String> {
            let path = self.base.join(p);
            std::fs::read(&path)
                .map(ImageInput::Encoded)
                .map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let candidate = match (&row.image, &row.frames) {
            (Some(img), None) => Candidate::Image(read(img)?),
            (None, Some(frames)) => {
                Candidate::Video(frames.iter().map(read).collect::<Result<_, _>>()?)
            }
            _ => return Err("a row needs exactly one of \"image\" or \"frames\"".into()),
        };
        let mode = match &row.mode {
            Some(m) => m.parse::<Mode>().map_err(|e| e.to_string())?,
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

/// Streams the jobs of a JSONL manifest; blank lines are skipped, bad lines become failing jobs.
pub fn manifest_jobs(path: &Path) -> Result<impl Iterator<Item = Job>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let lines = std::io::BufReader::new(file).lines().enumerate();
    Ok(lines.filter_map(move |(n, line)| {
        let fallback_id = format!("#{}", n + 1);
        let line = match line {
            Ok(l) if l.trim().is_empty() => return None,
            Ok(l) => l,
            Err(e) => {
                return Some(Job {
                    id: fallback_id,
                    row: Err(format!("reading line: {e}")),
                    base: base.clone(),
                })
            }
        };
        let row = serde_json::from_str::<Row>(&line).map_err(|e| format!("bad manifest line: {e}"));
        let id = row
            .as_ref()
            .ok()
            .and_then(|r| r.id.clone())
            .unwrap_or(fallback_id);
        Some(Job {
            id,
            row,
            base: base.clone(),
        })
    }))
}

/// Counts the non-blank lines of a manifest (for progress and ETA).
pub fn count_rows(path: &Path) -> Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    for line in std::io::BufReader::new(file).lines() {
        if !line?.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
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
            row: Ok(Row {
                id: Some(name.clone()),
                prompt: prompt.to_string(),
                image: Some(name),
                frames: None,
                reference: None,
                instruction: instruction.map(String::from),
                mode: None,
            }),
            base: dir.to_path_buf(),
        })
        .collect())
}
