//! The `--output` file of a batch evaluation under `--resume`.
//!
//! During a resumed run new lines are appended (so a run that is killed outright still leaves
//! every finished row on disk, and the next `--resume` picks them up). When the run ends,
//! normally, on Ctrl-C or on an error, the file is rewritten to one line per manifest row in
//! manifest order (a scored line where there is one, else the newest failure) through a
//! temporary file and a rename, so the file on disk is always either the old or the new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::manifest::id_key;

/// Where one output line lies in the file, and its `p_yes` when the row was scored.
#[derive(Debug, Clone, Copy)]
struct Line {
    offset: u64,
    len: usize,
    p_yes: Option<f64>,
}

/// The lines of an output file by id, in file order.
#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, (VecDeque<Line>, Vec<Line>)>,
    /// Lines that are not a JSON object with a string or numeric `id` (e.g. a line cut short
    /// when a run was killed mid-write).
    unreadable: u64,
    /// Whether the last byte of the file is a newline (or the file is empty).
    ends_with_newline: bool,
}

impl Index {
    fn read(path: &Path) -> Result<Index> {
        let mut index = Index {
            ends_with_newline: true,
            ..Index::default()
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut reader = std::io::BufReader::new(file);
        let (mut offset, mut buf) = (0u64, Vec::new());
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            index.ends_with_newline = buf.ends_with(b"\n");
            let len = buf.len()
                - buf
                    .iter()
                    .rev()
                    .take_while(|b| **b == b'\n' || **b == b'\r')
                    .count();
            let text = String::from_utf8_lossy(&buf[..len]);
            let start = offset;
            let line = move |p_yes| Line {
                offset: start,
                len,
                p_yes,
            };
            offset += n as u64;
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => match v.get("id").and_then(id_key) {
                    Some(id) => {
                        let entry = index.by_id.entry(id).or_default();
                        match v["p_yes"].as_f64() {
                            Some(p) => entry.0.push_back(line(Some(p))),
                            None => entry.1.push(line(None)),
                        }
                    }
                    None => index.unreadable += 1,
                },
                Err(_) => index.unreadable += 1,
            }
        }
        Ok(index)
    }
}

/// What `--resume` found in the output file before the run.
pub struct Resume {
    path: PathBuf,
    /// Per id: scored lines not yet claimed by a manifest row.
    scored: HashMap<String, u32>,
    /// Manifest rows that will be skipped (they have a scored line).
    pub to_skip: u64,
}

impl Resume {
    /// Reads `path` (absent: nothing to skip) against the manifest's ids. Refuses, before
    /// anything is written, a file with scored rows none of which is in the manifest: it is
    /// the output of another manifest, and the rewrite at the end would drop all of it.
    pub fn open(path: &Path, manifest_ids: &[String]) -> Result<Resume> {
        let index = Index::read(path)?;
        let scored: HashMap<String, u32> = index
            .by_id
            .iter()
            .filter(|(_, (s, _))| !s.is_empty())
            .map(|(id, (s, _))| (id.clone(), s.len() as u32))
            .collect();
        let mut left = scored.clone();
        let mut to_skip = 0;
        for id in manifest_ids {
            if let Some(n) = left.get_mut(id).filter(|n| **n > 0) {
                *n -= 1;
                to_skip += 1;
            }
        }
        if !scored.is_empty() && to_skip == 0 {
            bail!(
                "--resume: no id of the {} scored row(s) in {} is in the manifest; is it the \
                 output of another manifest? (the file was not changed)",
                scored.values().sum::<u32>(),
                path.display()
            );
        }
        if !index.ends_with_newline {
            // A line cut short by a killed run: end it, so the first appended line is whole.
            let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
            file.write_all(b"\n")?;
        }
        Ok(Resume {
            path: path.to_path_buf(),
            scored,
            to_skip,
        })
    }

    /// Whether the row with this id was scored before (each scored line counts for one row).
    pub fn take(&mut self, id: &str) -> bool {
        match self.scored.get_mut(id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Rewrites the file to one line per manifest row, in `ids` order; returns the `p_yes` of
    /// its scored rows and its count of failed rows.
    pub fn rewrite(&self, ids: &[String]) -> Result<(Vec<f64>, u64)> {
        let path = &self.path;
        let mut index = Index::read(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!("{name}.rewrite.tmp"));
        let mut source =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        let (mut p_yes, mut failed, mut buf) = (Vec::new(), 0u64, Vec::new());
        let mut seen = HashSet::new();
        for id in ids {
            let Some((scored, failures)) = index.by_id.get_mut(id) else {
                continue;
            };
            seen.insert(id);
            // A scored line where there is one; else the newest failure.
            let Some(line) = scored.pop_front().or_else(|| failures.pop()) else {
                continue;
            };
            match line.p_yes {
                Some(p) => p_yes.push(p),
                None => failed += 1,
            }
            buf.resize(line.len, 0);
            source.seek(SeekFrom::Start(line.offset))?;
            source.read_exact(&mut buf)?;
            out.write_all(&buf)?;
            out.write_all(b"\n")?;
        }
        let superseded: usize = seen
            .iter()
            .filter_map(|id| index.by_id.get(*id))
            .map(|(s, f)| s.len() + f.len())
            .sum();
        let orphans: usize = index
            .by_id
            .iter()
            .filter(|(id, _)| !seen.contains(id))
            .map(|(_, (s, f))| s.len() + f.len())
            .sum();
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))?;
        if superseded > 0 {
            eprintln!(
                "{}: replaced {superseded} earlier line(s) of retried rows",
                path.display()
            );
        }
        if orphans > 0 || index.unreadable > 0 {
            eprintln!(
                "warning: {}: dropped {orphans} line(s) whose id is in no manifest row and {} \
                 unreadable line(s)",
                path.display(),
                index.unreadable
            );
        }
        Ok((p_yes, failed))
    }
}
