//! `rewarddance rank`: rank N candidate images for one prompt (Best-of-N), in-process or on a
//! server's `Rank` RPC; prints a table (or, with `--json`, one JSON object). A candidate that
//! cannot be read or decoded is that candidate's error, and the exit code is then 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use rewarddance_model::image::{decode, DecodeLimits};
use rewarddance_model::{Candidate, ImageInput, Mode, ScoreItem};
use rewarddance_proto::v1;
use rewarddance_ranking::{rank_pairwise, rank_pointwise, schedule_pairs, Schedule};
use serde_json::{json, Value};

use crate::failure::ItemFailure;
use crate::model_args::ModelArgs;

/// Arguments of `rewarddance rank`.
#[derive(Args, Debug)]
pub struct RankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The generation prompt of all candidates.
    #[arg(long)]
    prompt: String,
    /// Candidate image files (at least two).
    #[arg(long = "image", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Rank by pointwise P(yes) instead of pairwise comparisons.
    #[arg(long)]
    pointwise: bool,
    /// Pairwise: compare each candidate with K random opponents instead of all others.
    #[arg(long, default_value_t = 0)]
    opponents: u32,
    /// Seed of the opponent draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Instruction template override (`{prompt}` substituted).
    #[arg(long)]
    instruction: Option<String>,
    /// Rank on a running server (http://host:port) instead of in-process.
    #[arg(long, env = "REWARDDANCE_SERVER")]
    server: Option<String>,
    /// Print the full result as JSON (preference matrix included) instead of a table.
    #[arg(long)]
    json: bool,
    /// Rank by this named reward (from `--rewards`, or the server's). Default: the first.
    #[arg(long, value_name = "NAME")]
    reward: Option<String>,
}

/// Each candidate file's bytes, or why it could not be read.
type Files = [Result<Vec<u8>, ItemFailure>];

/// Runs the subcommand.
pub fn run(args: RankArgs) -> Result<ExitCode> {
    if args.images.len() < 2 {
        bail!("ranking needs at least two --image");
    }
    let files: Vec<Result<Vec<u8>, ItemFailure>> = args
        .images
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| ItemFailure::unreadable(p, &e)))
        .collect();
    let out = match &args.server {
        Some(url) => remote(&args, url, &files)?,
        None => local(&args, &files)?,
    };
    let names = crate::rank_table::names(&args.images);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", crate::rank_table::render(&out, &names));
    }
    let mut failed = false;
    for (c, cand) in out["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(e) = cand["error"].as_str() {
            failed = true;
            if !args.json {
                eprintln!("candidate {c} ({}): {e}", names[c]);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `{"index", "input", "error", "reason"}` of candidate `c`.
fn candidate_json(c: usize, path: &std::path::Path, failure: Option<&ItemFailure>) -> Value {
    json!({ "index": c, "input": path.display().to_string(),
            "error": failure.map(|f| &f.message), "reason": failure.map(|f| &f.reason) })
}

fn local(args: &RankArgs, files: &Files) -> Result<Value> {
    let model = args.model.load()?;
    let reward = match &args.reward {
        None => 0,
        Some(name) => model
            .reward_index(name)
            .with_context(|| format!("unknown reward {name:?}"))?,
    };
    let n = files.len();
    let images: Vec<ImageInput> = files
        .iter()
        .map(|f| ImageInput::Encoded(f.as_ref().map_or_else(|_| Vec::new(), Clone::clone)))
        .collect();
    let limits = DecodeLimits {
        max_pixels: model.options().max_image_pixels,
    };
    let errors: Vec<Option<ItemFailure>> = files
        .iter()
        .zip(&images)
        .map(|(f, i)| match f {
            Err(e) => Some(e.clone()),
            Ok(_) => decode(i, &limits)
                .err()
                .map(|e| ItemFailure::from_model(&e)),
        })
        .collect();
    let failed: Vec<bool> = errors.iter().map(Option::is_some).collect();
    let item = |reference: Option<usize>, candidate: usize| ScoreItem {
        prompt: args.prompt.clone(),
        candidate: Candidate::Image(images[candidate].clone()),
        reference: reference.map(|r| images[r].clone()),
        instruction: args.instruction.clone(),
        mode: if reference.is_some() {
            Mode::Pairwise
        } else {
            Mode::Pointwise
        },
    };
    let mut candidates: Vec<Value> = args
        .images
        .iter()
        .zip(&errors)
        .enumerate()
        .map(|(c, (path, e))| candidate_json(c, path, e.as_ref()))
        .collect();
    if args.pointwise {
        let scores: Vec<Option<f64>> = (0..n)
            .map(|c| {
                if failed[c] {
                    None
                } else {
                    model.score_for(&[item(None, c)], reward)[0]
                        .as_ref()
                        .ok()
                        .map(|s| s.p_yes)
                }
            })
            .collect();
        for (c, s) in scores.iter().enumerate() {
            candidates[c]["p_yes"] = json!(s);
        }
        let order = rank_pointwise(&scores);
        let best = order.first().copied().filter(|&c| scores[c].is_some());
        return Ok(
            json!({ "model": model.id(), "method": "pointwise", "order": order, "best": best, "candidates": candidates }),
        );
    }
    let schedule = match args.opponents {
        0 => Schedule::AllPairs,
        k => Schedule::RandomOpponents {
            k: k as usize,
            seed: args.seed,
        },
    };
    let pairs: Vec<(usize, usize)> = schedule_pairs(n, schedule)
        .into_iter()
        .filter(|&(i, j)| !failed[i] && !failed[j])
        .collect();
    let items: Vec<ScoreItem> = pairs.iter().map(|&(i, j)| item(Some(i), j)).collect();
    let mut scored = Vec::with_capacity(pairs.len());
    for (chunk_pairs, chunk_items) in pairs.chunks(64).zip(items.chunks(64)) {
        for (&(i, j), s) in chunk_pairs.iter().zip(model.score_for(chunk_items, reward)) {
            scored.push((i, j, s.ok().map(|s| s.p_yes)));
        }
    }
    let ranking = rank_pairwise(n, &scored, &failed);
    for (c, cand) in candidates.iter_mut().enumerate() {
        cand["wins"] = json!(ranking.wins[c]);
        cand["strength"] = json!(ranking.strengths[c]);
    }
    let order = &ranking.order;
    Ok(json!({
        "model": model.id(), "method": "pairwise", "comparisons": pairs.len(), "order": order,
        "best": ranking.best, "candidates": candidates, "preference": ranking.preference,
    }))
}

fn remote(args: &RankArgs, url: &str, files: &Files) -> Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(async {
        let mut client = v1::reward_service_client::RewardServiceClient::connect(url.to_string())
            .await
            .with_context(|| format!("connecting to {url}"))?
            .max_encoding_message_size(256 << 20)
            .max_decoding_message_size(64 << 20);
        let request = v1::RankRequest {
            reward: args.reward.clone().unwrap_or_default(),
            prompt: args.prompt.clone(),
            // An unreadable file goes as an empty image: the server fails that candidate alone
            // and the schedule of the others is the one an in-process run uses.
            candidates: files
                .iter()
                .map(|f| v1::Image {
                    source: Some(v1::image::Source::Encoded(
                        f.as_ref().map_or_else(|_| Vec::new(), Clone::clone),
                    )),
                })
                .collect(),
            instruction: args.instruction.clone(),
            method: if args.pointwise {
                v1::RankMethod::Pointwise
            } else {
                v1::RankMethod::Pairwise
            } as i32,
            opponents: args.opponents,
            seed: args.seed,
        };
        anyhow::Ok(client.rank(request).await.context("Rank")?.into_inner())
    })?;
    let candidates: Vec<Value> = response
        .candidates
        .iter()
        .zip(&args.images)
        .zip(files)
        .map(|((c, path), file)| {
            let failure = match (file, &c.error) {
                (Err(local), _) => Some(local.clone()),
                (Ok(_), Some(e)) => Some(ItemFailure::new(e.reason.clone(), e.message.clone())),
                (Ok(_), None) => None,
            };
            let mut v = candidate_json(c.index as usize, path, failure.as_ref());
            v["wins"] = json!(c.wins);
            v["strength"] = json!(c.strength);
            v["p_yes"] = json!(c.p_yes);
            v
        })
        .collect();
    let preference: Vec<Vec<Option<f64>>> = response
        .preference
        .iter()
        .map(|row| row.p.iter().map(|p| (!p.is_nan()).then_some(*p)).collect())
        .collect();
    Ok(json!({
        "model": response.model_id, "method": if args.pointwise { "pointwise" } else { "pairwise" },
        "comparisons": response.comparisons, "order": response.order, "best": response.best,
        "candidates": candidates, "preference": preference,
    }))
}
