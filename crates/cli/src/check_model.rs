//! `rewarddance check-model`: what a checkpoint load would choose (template, tokenizer source,
//! tile settings, answer token ids, rope scaling) and why, without reading the weights.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::model_args::ModelArgs;

/// Flags of `check-model`: the same model flags as `score` / `serve`.
#[derive(Args, Debug)]
pub struct CheckModelArgs {
    #[command(flatten)]
    model: ModelArgs,
}

/// Prints the report as JSON; exit 0 when the checkpoint would load, 2 (with the reason) when not.
pub fn run(args: CheckModelArgs) -> Result<ExitCode> {
    let checkpoint = args.model.checkpoint()?;
    let options = args.model.options()?;
    let report = rewarddance_model::pipeline::report::check_model(&checkpoint, &options)
        .with_context(|| format!("checking model {}", checkpoint.id))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
