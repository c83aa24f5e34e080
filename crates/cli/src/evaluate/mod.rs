//! `rewarddance score --manifest FILE | --dir DIR`: batch evaluation.
//!
//! Rows are read lazily, scored in batches, and written as JSON lines in input order, each with
//! its id and either the scores or the row's own error: a bad row never stops the run.
//! `--resume` skips ids already present in `--output`. A summary goes to stderr at the end.

mod manifest;
mod remote;
mod summary;

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use rewarddance_model::{Error, PreparedItem, RationaleOptions, RewardModel, Score, ScoreItem};
use serde_json::{json, Value};

use manifest::{count_rows, directory_jobs, manifest_jobs, Job};
pub use remote::RemoteScorer;
pub use summary::Summary;

/// Batch-evaluation flags of `rewarddance score`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// JSONL manifest: one object per line with `prompt` and `image` (or `frames`), optional
    /// `id`, `reference`, `instruction`, `mode`; paths relative to the manifest.
    #[arg(long, conflicts_with_all = ["images", "frames", "dir"])]
    pub manifest: Option<PathBuf>,
    /// Score every image (png, jpg, jpeg, webp) in this directory with --prompt.
    #[arg(long, conflicts_with_all = ["images", "frames"])]
    pub dir: Option<PathBuf>,
    /// Write JSON lines here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Skip rows already scored in --output (failed rows are retried) and append to it.
    #[arg(long, requires = "output")]
    pub resume: bool,
    /// Items per forward pass.
    #[arg(long, env = "REWARDDANCE_EVAL_BATCH", default_value_t = 16)]
    pub batch_size: usize,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Score on a running server (e.g. http://127.0.0.1:50051) over ScoreStream instead of
    /// loading a model in-process.
    #[arg(long, env = "REWARDDANCE_SERVER")]
    pub server: Option<String>,
    /// Requests (of --batch-size items) in flight on the stream with --server.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Bearer token for a server started with --auth-token.
    #[arg(long, env = "REWARDDANCE_CLIENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// One row's answer: its score and, with `--rationale`, the rationale as an output object.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The reward.
    pub score: Score,
    /// `{"text", "stop", "tokens"}` when a rationale was decoded.
    pub rationale: Option<Value>,
}

/// One scored batch: the rows and one result (scores or the row's error) per row.
pub type ScoredBatch = (Vec<Job>, Vec<std::result::Result<Scored, String>>);

/// Where a batch of rows gets scored: in-process or on a server. Batches are answered in the
/// order they were submitted.
pub trait BatchScorer {
    /// Batches that may be submitted before one must be received.
    fn capacity(&self) -> usize;
    /// Sends (or computes) one batch.
    fn submit(&mut self, jobs: Vec<Job>) -> Result<()>;
    /// The oldest submitted batch with one result per row.
    fn receive(&mut self) -> Result<ScoredBatch>;
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

/// Runs a batch evaluation on `scorer` (in-process or remote).
pub fn run(
    scorer: &mut dyn BatchScorer,
    args: &EvalArgs,
    prompt: Option<&str>,
    instruction: Option<&str>,
) -> Result<Summary> {
    let (jobs, total): (Box<dyn Iterator<Item = Job>>, u64) = match (&args.manifest, &args.dir) {
        (Some(m), _) => (Box::new(manifest_jobs(m)?), count_rows(m)?),
        (None, Some(d)) => {
            let prompt = prompt.context("--dir needs --prompt")?;
            let jobs = directory_jobs(d, prompt, instruction)?;
            let n = jobs.len() as u64;
            (Box::new(jobs.into_iter()), n)
        }
        (None, None) => bail!("batch mode needs --manifest or --dir"),
    };
    let done = match (&args.output, args.resume) {
        (Some(path), true) => ids_in(path)?,
        _ => HashSet::new(),
    };
    let mut out: Box<dyn Write> = match &args.output {
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
    let progress = progress_bar(total, args.quiet);
    let mut summary = Summary::default();
    let started = Instant::now();
    let mut jobs = jobs.peekable();
    let mut in_flight = 0;
    loop {
        // Keep the scorer busy: submit while there is room and rows left, else collect one.
        if in_flight < scorer.capacity() && jobs.peek().is_some() {
            let mut batch = Vec::with_capacity(args.batch_size);
            while batch.len() < args.batch_size.max(1) {
                match jobs.next() {
                    Some(job) if done.contains(&job.id) => {
                        summary.skipped += 1;
                        progress.inc(1);
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
            break;
        }
        let (batch, results) = scorer.receive()?;
        in_flight -= 1;
        for (job, result) in batch.iter().zip(results) {
            let line = match result {
                Ok(Scored {
                    score: s,
                    rationale,
                }) => {
                    summary.record(s.p_yes);
                    let mut row = json!({ "id": job.id, "p_yes": s.p_yes,
                            "p_yes_vocab": s.p_yes_vocab, "logit_yes": s.logit_yes,
                            "logit_no": s.logit_no });
                    if let Some(r) = rationale {
                        row["rationale"] = r;
                    }
                    row
                }
                Err(e) => {
                    summary.record_failure();
                    json!({ "id": job.id, "error": e })
                }
            };
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    eprintln!("{}", summary.to_json(started.elapsed()));
    Ok(summary)
}

/// Prepares the batch's rows in parallel, then scores the good ones in one forward pass (and
/// decodes their rationales together).
fn score_jobs(
    model: &RewardModel,
    jobs: &[Job],
    rationale: Option<RationaleOptions>,
) -> Vec<std::result::Result<Scored, String>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let chunk = jobs.len().div_ceil(workers).max(1);
    let prepared: Vec<rewarddance_model::Result<PreparedItem>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|job| prepare(model, job))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(Error::Compute(candle_core::Error::Msg(
                        "preprocessing panicked".into(),
                    )))]
                })
            })
            .collect()
    });
    let ok: Vec<&PreparedItem> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let batch = model
        .score_with_rationales(&ok, &vec![rationale; ok.len()], &mut |_, _| true)
        .map_err(|e| e.to_string());
    let mut answers = batch.as_ref().map(|b| b.iter()).ok();
    prepared
        .iter()
        .map(|p| {
            p.as_ref().map_err(|e| e.to_string())?;
            match (&batch, answers.as_mut().and_then(Iterator::next)) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Some((score, r))) => Ok(Scored {
                    score: *score,
                    rationale: r.as_ref().map(crate::rationale_args::model_json),
                }),
                (Ok(_), None) => Err("the batch returned too few scores".into()),
            }
        })
        .collect()
}

fn prepare(model: &RewardModel, job: &Job) -> rewarddance_model::Result<PreparedItem> {
    let item: ScoreItem = job.load().map_err(Error::InvalidInput)?;
    model.prepare(&item)
}

/// Ids already *scored* in an output file; failed rows are retried (their new line supersedes
/// the old one), and unparsable lines are ignored.
fn ids_in(path: &PathBuf) -> Result<HashSet<String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut ids = HashSet::new();
    for line in std::io::BufReader::new(file).lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) {
            if let (Some(id), true) = (v["id"].as_str(), v["p_yes"].is_number()) {
                ids.insert(id.to_string());
            }
        }
    }
    Ok(ids)
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}
