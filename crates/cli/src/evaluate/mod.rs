//! `rewarddance score --manifest FILE | --dir DIR`: batch evaluation.
//!
//! Rows are read lazily, scored in batches, and written as JSON lines in input order, each with
//! its id (and the row's other fields) and either the scores or the row's own error: a bad row
//! never stops the run. `--resume` skips rows already scored in `--output` and leaves the file
//! with one line per row (see [`output`]). A summary goes to stderr at the end, also after
//! Ctrl-C, which stops the run once the rows in flight are written.

mod interrupt;
mod manifest;
mod output;
mod progress;
mod remote;
mod summary;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use rewarddance_model::{PreparedItem, RationaleOptions, RewardModel, Score};
use serde_json::{json, Map, Value};

use crate::failure::ItemFailure;
use manifest::{directory_jobs, manifest_jobs, Job};
use output::Resume;
use progress::Progress;
pub use remote::RemoteScorer;
pub use summary::Summary;

/// Batch-evaluation flags of `rewarddance score`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// JSONL manifest: one object per line with `prompt` and `image` (or `frames`), optional
    /// `id` (string or number), `reference`, `instruction`, `mode`, `rewards` (names); other
    /// fields are copied to the output line; paths relative to the manifest.
    #[arg(long, conflicts_with_all = ["images", "frames", "dir"])]
    pub manifest: Option<PathBuf>,
    /// Score every image (png, jpg, jpeg, webp) in this directory with --prompt.
    #[arg(long, conflicts_with_all = ["images", "frames"])]
    pub dir: Option<PathBuf>,
    /// Write JSON lines here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Skip rows already scored in --output (failed rows are retried), then rewrite it to one
    /// line per row in input order.
    #[arg(long, requires = "output")]
    pub resume: bool,
    /// Items per forward pass.
    #[arg(long, env = "REWARDDANCE_EVAL_BATCH", default_value_t = 16)]
    pub batch_size: usize,
    /// No progress bar even on a terminal.
    #[arg(long, env = "REWARDDANCE_QUIET")]
    pub quiet: bool,
    /// Score on a running server (e.g. http://127.0.0.1:50051) over ScoreStream instead of
    /// loading a model in-process.
    #[arg(long, env = "REWARDDANCE_SERVER")]
    pub server: Option<String>,
    /// Requests (of --batch-size items) in flight on the stream with --server.
    #[arg(long, env = "REWARDDANCE_IN_FLIGHT", default_value_t = 4)]
    pub in_flight: usize,
    /// Bearer token for a server started with --auth-token.
    #[arg(long, env = "REWARDDANCE_CLIENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// One row's answer: its score and, with `--rationale`, the rationale as an output object.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The reward (the first named one's, when the row names rewards).
    pub score: Score,
    /// `{"text", "stop", "tokens"}` when a rationale was decoded.
    pub rationale: Option<Value>,
    /// When the row names rewards: each one's outcome, in the row's order.
    pub rewards: Vec<(String, std::result::Result<Score, ItemFailure>)>,
}

/// One row's outcome.
pub type RowResult = std::result::Result<Scored, ItemFailure>;

/// One scored batch: the rows and one result (scores or the row's failure) per row.
pub type ScoredBatch = (Vec<Job>, Vec<RowResult>);

/// Where a batch of rows gets scored: in-process or on a server. Batches are answered in the
/// order they were submitted.
pub trait BatchScorer {
    /// Batches that may be submitted before one must be received.
    fn capacity(&self) -> usize;
    /// Sends (or computes) one batch.
    fn submit(&mut self, jobs: Vec<Job>) -> Result<()>;
    /// The oldest submitted batch with one result per row.
    fn receive(&mut self) -> Result<ScoredBatch>;
    /// Ends the session cleanly once every batch was received (a server stream is half-closed
    /// and read to its end, so the server counts the call as OK).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// In-process scoring: each batch is computed on submit.
pub struct LocalScorer<'a> {
    model: &'a RewardModel,
    rationale: Option<RationaleOptions>,
    ready: std::collections::VecDeque<ScoredBatch>,
}

impl<'a> LocalScorer<'a> {
    /// Scores with `model`, decoding a rationale per row when `rationale` is set.
    pub fn new(model: &'a RewardModel, rationale: Option<RationaleOptions>) -> Self {
        LocalScorer {
            model,
            rationale,
            ready: Default::default(),
        }
    }
}

impl BatchScorer for LocalScorer<'_> {
    fn capacity(&self) -> usize {
        1
    }

    fn submit(&mut self, jobs: Vec<Job>) -> Result<()> {
        let results = score_jobs(self.model, &jobs, self.rationale);
        self.ready.push_back((jobs, results));
        Ok(())
    }

    fn receive(&mut self) -> Result<ScoredBatch> {
        self.ready.pop_front().context("nothing submitted")
    }
}

impl EvalArgs {
    /// Whether batch mode was asked for.
    pub fn requested(&self) -> bool {
        self.manifest.is_some() || self.dir.is_some()
    }
}

/// The rows of a run, and their ids in order (read once up front, for the progress total,
/// the duplicate-id warning and the rewrite of a resumed output).
fn rows(
    args: &EvalArgs,
    prompt: Option<&str>,
    instruction: Option<&str>,
) -> Result<(Box<dyn Iterator<Item = Job>>, Vec<String>)> {
    match (&args.manifest, &args.dir) {
        (Some(m), _) => {
            let ids: Vec<String> = manifest_jobs(m)?.map(|j| j.id).collect();
            warn_duplicates(&ids, &m.display().to_string());
            Ok((Box::new(manifest_jobs(m)?), ids))
        }
        (None, Some(d)) => {
            let prompt = prompt.context("--dir needs --prompt")?;
            let jobs = directory_jobs(d, prompt, instruction)?;
            let ids = jobs.iter().map(|j| j.id.clone()).collect();
            Ok((Box::new(jobs.into_iter()), ids))
        }
        (None, None) => bail!("batch mode needs --manifest or --dir"),
    }
}

/// Warns about ids that several rows share: output lines are told apart by id.
fn warn_duplicates(ids: &[String], source: &str) {
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let mut repeated: Vec<(&str, u32)> = counts.into_iter().filter(|(_, n)| *n > 1).collect();
    if repeated.is_empty() {
        return;
    }
    repeated.sort();
    let shown: Vec<String> = repeated
        .iter()
        .take(5)
        .map(|(id, n)| format!("{id:?} ({n} rows)"))
        .collect();
    eprintln!(
        "warning: {} id(s) of {source} are shared by several rows: {}{}; every row is still \
         scored, but output lines are matched to rows by id (--resume), so give each row its own",
        repeated.len(),
        shown.join(", "),
        if repeated.len() > 5 { ", ..." } else { "" }
    );
}

/// Runs a batch evaluation on `scorer` (in-process or remote).
pub fn run(
    scorer: &mut dyn BatchScorer,
    args: &EvalArgs,
    prompt: Option<&str>,
    instruction: Option<&str>,
) -> Result<Summary> {
    let setup = (|| -> Result<_> {
        let (jobs, ids) = rows(args, prompt, instruction)?;
        let resume = match (&args.output, args.resume) {
            (Some(path), true) => Some(Resume::open(path, &ids)?),
            _ => None,
        };
        let out: Box<dyn Write> = match &args.output {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(args.resume)
                    .truncate(!args.resume)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            )),
            None => Box::new(std::io::stdout().lock()),
        };
        Ok((jobs, ids, resume, out))
    })();
    let (jobs, ids, mut resume, mut out) = match setup {
        Ok(s) => s,
        Err(e) => {
            // Nothing was sent: end a server session cleanly all the same.
            let _ = scorer.finish();
            return Err(e);
        }
    };
    let stop = interrupt::on_ctrl_c();
    let to_skip = resume.as_ref().map_or(0, |r| r.to_skip);
    let mut progress = Progress::new(ids.len() as u64, to_skip, args.quiet);
    let mut summary = Summary::default();
    let started = Instant::now();
    let mut jobs = jobs.peekable();
    let mut in_flight = 0;
    let result = (|| -> Result<()> {
        loop {
            let stopping = stop.is_set();
            // Keep the scorer busy: submit while there is room and rows left, else collect one.
            if !stopping && in_flight < scorer.capacity() && jobs.peek().is_some() {
                let mut batch = Vec::with_capacity(args.batch_size);
                while batch.len() < args.batch_size.max(1) {
                    match jobs.next() {
                        Some(job) if resume.as_mut().is_some_and(|r| r.take(&job.id)) => {
                            summary.skipped += 1;
                            progress.skipped(1);
                        }
                        Some(job) => batch.push(job),
                        None => break,
                    }
                }
                if !batch.is_empty() {
                    scorer.submit(batch)?;
                    in_flight += 1;
                }
                continue;
            }
            if in_flight == 0 {
                summary.interrupted = stopping && jobs.peek().is_some();
                return scorer.finish();
            }
            let (batch, results) = scorer.receive()?;
            in_flight -= 1;
            let failed_before = summary.failed_now;
            for (job, result) in batch.iter().zip(results) {
                let line = output_line(job, result, &mut summary);
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            progress.answered(batch.len() as u64, summary.failed_now - failed_before);
        }
    })();
    progress.finish();
    let flushed = out.flush();
    drop(out);
    if let Some(resume) = &resume {
        let (p_yes, failed) = resume.rewrite(&ids)?;
        summary.set_file(p_yes, failed);
    }
    eprintln!("{}", summary.to_json(started.elapsed()));
    if summary.interrupted {
        eprintln!("{}", resume_hint(args, &summary, ids.len()));
    }
    result?;
    flushed?;
    Ok(summary)
}

/// What to do after Ctrl-C.
fn resume_hint(args: &EvalArgs, summary: &Summary, rows: usize) -> String {
    let written = summary.scored + summary.failed;
    match &args.output {
        Some(path) => format!(
            "interrupted: {written} of {rows} rows are in {}; re-run the same command with \
             --resume to score the rest",
            path.display()
        ),
        None => format!(
            "interrupted: {written} of {rows} rows were written; to continue, re-run with \
             --output FILE --resume, FILE holding what was written"
        ),
    }
}

/// The output line of one row: its id and carried fields, then the scores or the failure.
fn output_line(job: &Job, result: RowResult, summary: &mut Summary) -> Value {
    let mut row = Value::Object(job.echo.clone());
    match result {
        Ok(Scored {
            score: s,
            rationale,
            rewards,
        }) => {
            summary.record(s.p_yes);
            for (key, value) in score_fields(&s) {
                row[key] = value;
            }
            if let Some(r) = rationale {
                row["rationale"] = r;
            }
            if !rewards.is_empty() {
                let mut each = Map::new();
                for (name, outcome) in rewards {
                    let cell = match outcome {
                        Ok(s) => Map::from_iter(
                            score_fields(&s)
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v)),
                        ),
                        Err(e) => Map::from_iter([
                            ("error".to_string(), json!(e.message)),
                            ("reason".to_string(), json!(e.reason)),
                        ]),
                    };
                    each.insert(name, Value::Object(cell));
                }
                row["rewards"] = Value::Object(each);
            }
        }
        Err(e) => {
            summary.record_failure();
            row["error"] = json!(e.message);
            row["reason"] = json!(e.reason);
        }
    }
    row
}

/// A score's output fields.
fn score_fields(s: &Score) -> [(&'static str, Value); 4] {
    [
        ("p_yes", json!(s.p_yes)),
        ("p_yes_vocab", json!(s.p_yes_vocab)),
        ("logit_yes", json!(s.logit_yes)),
        ("logit_no", json!(s.logit_no)),
    ]
}

/// Prepares the batch's rows in parallel (a row naming rewards once per reward, its images
/// decoded once), then scores everything in one forward pass (and decodes the rationales,
/// each row's first reward's, together).
fn score_jobs(
    model: &RewardModel,
    jobs: &[Job],
    rationale: Option<RationaleOptions>,
) -> Vec<RowResult> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let chunk = jobs.len().div_ceil(workers).max(1);
    // Per row: one prepared item per reward (one for a row naming none).
    let prepared: Vec<Vec<std::result::Result<PreparedItem, ItemFailure>>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .chunks(chunk)
                .map(|part| {
                    let handle = scope.spawn(move || {
                        part.iter()
                            .map(|job| prepare(model, job))
                            .collect::<Vec<_>>()
                    });
                    (part.len(), handle)
                })
                .collect();
            // A chunk that panicked fails each of its rows, so results stay aligned with rows.
            handles
                .into_iter()
                .flat_map(|(n, h)| {
                    h.join().unwrap_or_else(|_| {
                        vec![vec![Err(ItemFailure::new("internal", "preprocessing panicked"))]; n]
                    })
                })
                .collect()
        });
    let ok: Vec<&PreparedItem> = prepared
        .iter()
        .flatten()
        .filter_map(|p| p.as_ref().ok())
        .collect();
    // Only each row's first reward decodes a rationale.
    let options: Vec<Option<RationaleOptions>> = prepared
        .iter()
        .flat_map(|each| {
            each.iter()
                .enumerate()
                .filter(|(_, p)| p.is_ok())
                .map(|(k, _)| if k == 0 { rationale } else { None })
        })
        .collect();
    let batch = model
        .score_with_rationales(&ok, &options, &mut |_, _| true)
        .map_err(|e| ItemFailure::from_model(&e));
    let mut answers = batch.as_ref().map(|b| b.iter()).ok();
    let mut next = |p: &std::result::Result<PreparedItem, ItemFailure>| {
        p.as_ref().map_err(Clone::clone)?;
        match (&batch, answers.as_mut().and_then(Iterator::next)) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), Some((score, r))) => {
                Ok((*score, r.as_ref().map(crate::rationale_args::model_json)))
            }
            (Ok(_), None) => Err(ItemFailure::new(
                "internal",
                "the batch returned too few scores",
            )),
        }
    };
    prepared
        .iter()
        .zip(jobs)
        .map(|(each, job)| {
            let outcomes: Vec<_> = each.iter().map(&mut next).collect();
            let names = job.reward_names();
            let rewards = names
                .iter()
                .zip(&outcomes)
                .map(|(n, o)| (n.clone(), o.as_ref().map(|(s, _)| *s).map_err(Clone::clone)))
                .collect();
            let (score, rationale) = outcomes
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(ItemFailure::new("internal", "a row got no score")))?;
            Ok(Scored {
                score,
                rationale,
                rewards,
            })
        })
        .collect()
}

/// The row's item prepared for each reward it names (the first reward when none): an unknown
/// or repeated name fails the row, as on a server.
fn prepare(model: &RewardModel, job: &Job) -> Vec<std::result::Result<PreparedItem, ItemFailure>> {
    let names = job.reward_names();
    let rewards = match model
        .reward_indices(names)
        .map_err(|m| ItemFailure::new("unknown_reward", m))
    {
        Ok(r) => r,
        Err(e) => return vec![Err(e)],
    };
    let item = match job.load() {
        Ok(item) => item,
        Err(e) => return vec![Err(e)],
    };
    model
        .prepare_rewards(&item, &rewards)
        .into_iter()
        .map(|p| p.map_err(|e| ItemFailure::from_model(&e)))
        .collect()
}
