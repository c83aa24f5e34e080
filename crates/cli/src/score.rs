//! `rewarddance score`: score images (or one video) in-process, one JSON object per item; with
//! `--manifest` / `--dir`, a batch evaluation (see [`crate::evaluate`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use rewarddance_model::{Candidate, ImageInput, Mode, PreparedItem, ScoreItem};
use serde_json::json;

use crate::evaluate::{self, EvalArgs};
use crate::failure::ItemFailure;
use crate::model_args::ModelArgs;
use crate::rationale_args::{self, RationaleArgs};

/// Arguments of `rewarddance score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    eval: EvalArgs,
    #[command(flatten)]
    rationale: RationaleArgs,
    /// The generation prompt the images were made from.
    #[arg(long, required_unless_present = "manifest")]
    prompt: Option<String>,
    /// Candidate image file(s); each is one item. Conflicts with --frame.
    #[arg(
        long = "image",
        id = "images",
        required_unless_present_any = ["frames", "manifest", "dir"],
        conflicts_with = "frames"
    )]
    images: Vec<PathBuf>,
    /// Video frames in order (one item: a video scored pointwise).
    #[arg(long = "frame", id = "frames")]
    frames: Vec<PathBuf>,
    /// Reference image (Image 1): switches to pairwise mode.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Mode: pointwise or pairwise. Default: pairwise when --reference is given.
    #[arg(long, env = "REWARDDANCE_MODE")]
    mode: Option<String>,
    /// Instruction template overriding the default; `{prompt}` is replaced by the prompt.
    #[arg(long, env = "REWARDDANCE_INSTRUCTION")]
    instruction: Option<String>,
    /// Print compact JSON lines (default: pretty JSON).
    #[arg(long, env = "REWARDDANCE_JSON")]
    json: bool,
    /// Add what the model saw: rendered prompt, input_ids, tile grids.
    #[arg(long)]
    explain: bool,
    /// Write the gradient of `--objective` with respect to the image's pixels (read as
    /// `[0, 1]` floats, `v / 255`) to FILE as a float32 `.npy` of shape (H, W, 3), and print
    /// the score with the objective's value and the gradient's size. One `--image`.
    #[arg(
        long,
        value_name = "FILE.npy",
        conflicts_with_all = ["frames", "manifest", "dir", "rationale"]
    )]
    grad_out: Option<PathBuf>,
    /// What `--grad-out` differentiates: `p_yes`, `log_p_yes` or `logit_margin`.
    #[arg(long, default_value = "p_yes", requires = "grad_out")]
    objective: String,
    /// Score with this named reward (from `--rewards`); repeat for several: one output
    /// object per item and reward, each with its `reward`. Default: the first reward.
    #[arg(
        long = "reward",
        id = "reward",
        value_name = "NAME",
        conflicts_with_all = ["manifest", "dir"]
    )]
    reward_names: Vec<String>,
}

/// Runs the subcommand. Single items: exit 1 when any item failed (an unreadable file too).
/// Batch mode: exit 0 once the run completes (failures are rows in the output and counts in
/// the summary), 130 when Ctrl-C stopped it.
pub fn run(args: ScoreArgs) -> Result<ExitCode> {
    let (prompt, instruction) = (args.prompt.as_deref(), args.instruction.as_deref());
    let rationale = args.rationale.options()?;
    if let (true, Some(url)) = (args.eval.requested(), &args.eval.server) {
        let token = args.eval.token.clone();
        let mut remote =
            evaluate::RemoteScorer::connect(url, args.eval.in_flight, token, rationale)?;
        let summary = evaluate::run(&mut remote, &args.eval, prompt, instruction)?;
        return Ok(batch_exit(&summary));
    }
    let model = args.model.load()?;
    if args.eval.requested() {
        let mut local = evaluate::LocalScorer::new(&model, rationale);
        let summary = evaluate::run(&mut local, &args.eval, prompt, instruction)?;
        return Ok(batch_exit(&summary));
    }
    let prompt = args.prompt.clone().unwrap_or_default();
    let mode = match &args.mode {
        Some(m) => m.parse::<Mode>()?,
        None if args.reference.is_some() => Mode::Pairwise,
        None => Mode::Pointwise,
    };
    // A file that cannot be read fails its item (all items, for the shared reference), as a
    // corrupt one does.
    let read = |p: &PathBuf| -> Result<ImageInput, ItemFailure> {
        std::fs::read(p)
            .map(ImageInput::Encoded)
            .map_err(|e| ItemFailure::unreadable(p, &e))
    };
    let reference = args.reference.as_ref().map(read).transpose();
    let item = |candidate: Result<Candidate, ItemFailure>| -> Result<ScoreItem, ItemFailure> {
        Ok(ScoreItem {
            prompt: prompt.clone(),
            candidate: candidate?,
            reference: reference.clone()?,
            instruction: args.instruction.clone(),
            mode,
        })
    };
    if let Some(out) = &args.grad_out {
        let [image] = args.images.as_slice() else {
            anyhow::bail!("--grad-out takes exactly one --image");
        };
        let item =
            item(read(image).map(Candidate::Image)).map_err(|e| anyhow::anyhow!(e.message))?;
        let out = crate::grad_out::run(&model, item, args.objective.parse()?, out)?;
        println!("{}", serde_json::to_string(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (labels, items): (Vec<String>, Vec<Result<ScoreItem, ItemFailure>>) =
        if args.frames.is_empty() {
            args.images
                .iter()
                .map(|p| (p.display().to_string(), item(read(p).map(Candidate::Image))))
                .unzip()
        } else {
            let frames = args.frames.iter().map(read).collect::<Result<Vec<_>, _>>();
            (
                vec![format!("{} frames", args.frames.len())],
                vec![item(frames.map(Candidate::Video))],
            )
        };

    // Each item once per requested reward (its images decoded once).
    let rewards = model
        .reward_indices(&args.reward_names)
        .map_err(anyhow::Error::msg)?;
    let names: Vec<Option<&str>> = if args.reward_names.is_empty() {
        vec![None]
    } else {
        args.reward_names.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut prepared: Vec<Result<PreparedItem, ItemFailure>> = Vec::new();
    let mut reward_names: Vec<Option<&str>> = Vec::new();
    let labels: Vec<String> = labels
        .iter()
        .zip(&items)
        .flat_map(|(label, item)| {
            let each: Vec<Result<PreparedItem, ItemFailure>> = match item {
                Ok(i) => model
                    .prepare_rewards(i, &rewards)
                    .into_iter()
                    .map(|p| p.map_err(|e| ItemFailure::from_model(&e)))
                    .collect(),
                Err(e) => rewards.iter().map(|_| Err(e.clone())).collect(),
            };
            prepared.extend(each);
            reward_names.extend(names.iter().copied());
            std::iter::repeat_n(label.clone(), rewards.len())
        })
        .collect();
    let ok: Vec<&PreparedItem> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let ok_labels: Vec<&String> = labels
        .iter()
        .zip(&prepared)
        .filter(|(_, p)| p.is_ok())
        .map(|(l, _)| l)
        .collect();
    let stream = args.rationale.stream;
    let mut on_text = |i: usize, text: &str| {
        if stream {
            if ok.len() > 1 {
                eprintln!("[{}] {text}", ok_labels[i]);
            } else {
                eprint!("{text}");
            }
        }
        true
    };
    let scored = model.score_with_rationales(&ok, &vec![rationale; ok.len()], &mut on_text)?;
    if stream && ok.len() == 1 {
        eprintln!();
    }
    let mut scores = scored.into_iter();
    let mut failed = false;
    for ((label, p), reward) in labels.iter().zip(&prepared).zip(&reward_names) {
        let mut out = json!({ "input": label, "model": model.id() });
        if let Some(name) = reward {
            out["reward"] = json!(name);
        }
        match p {
            Ok(p) => {
                let (s, r) = scores.next().context("missing score")?;
                out["p_yes"] = json!(s.p_yes);
                out["p_yes_vocab"] = json!(s.p_yes_vocab);
                out["logit_yes"] = json!(s.logit_yes);
                out["logit_no"] = json!(s.logit_no);
                if let Some(r) = &r {
                    out["rationale"] = rationale_args::model_json(r);
                }
                if args.explain {
                    out["explain"] = json!({
                        "template": model.prompt_builder().template_source(),
                        "rendered_prompt": p.rendered_prompt,
                        "input_ids": p.input_ids,
                        "num_tokens": p.num_tokens(),
                        "images": p.images,
                    });
                }
            }
            Err(e) => {
                failed = true;
                out["error"] = json!(e.message);
                out["reason"] = json!(e.reason);
            }
        }
        let text = if args.json {
            serde_json::to_string(&out)?
        } else {
            serde_json::to_string_pretty(&out)?
        };
        println!("{text}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Exit status of a batch run: 0 when it ran to the end, 130 (as for SIGINT) after Ctrl-C.
fn batch_exit(summary: &evaluate::Summary) -> ExitCode {
    if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}
