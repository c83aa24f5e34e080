//! `rewarddance`: the RewardDance reward service's one binary.
//!
//! Settings flags have a `REWARDDANCE_*` environment variable; the flags that name one call's
//! inputs (README: "Flags without an environment variable") do not. Their defaults come from
//! the crates that own them (`LoadOptions`, `EngineConfig`, `RationaleOptions`, ...).
//!
//! One module per subcommand:
//! - [`score`]: `score`, one item or a few in-process, printed as JSON; with `--manifest` /
//!   `--dir` it hands over to [`evaluate`] (batch evaluation: `evaluate::manifest` inputs,
//!   in-process or `evaluate::remote` against a server, `evaluate::output` with `--resume`,
//!   `evaluate::progress`, `evaluate::interrupt` for Ctrl-C, `evaluate::summary`)
//! - [`rank`]: `rank`, Best-of-N for one prompt ([`rank_table`]: the table it prints)
//! - [`serve`]: `serve`, the gRPC server over one engine and a model per device
//! - [`bench`](mod@bench): `bench`, concurrent gRPC clients against a server
//! - [`bench_model`]: `bench-model`, the model alone: items/s and MFU
//! - [`check_model`]: `check-model`, what a load would choose
//! - [`parity`]: `parity`, scores against the committed fixtures' references
//!
//! Shared by several: [`model_args`] (flags that choose and load the model and check its
//! memory), [`rationale_args`] (`--rationale` and its decoding flags), [`failure`] (why an
//! item could not be scored, as stable JSON), [`notes`] (operator notes on stderr in the
//! `--log-format`).

mod bench;
mod bench_lora;
mod bench_model;
mod check_model;
mod evaluate;
mod failure;
mod grad_out;
mod model_args;
mod notes;
mod parity;
mod rank;
mod rank_table;
mod rationale_args;
mod score;
mod serve;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// RewardDance generative reward model: score images and videos with an InternVL VLM.
#[derive(Parser)]
#[command(name = "rewarddance", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score one or more images in-process and print one JSON object per item.
    Score(Box<score::ScoreArgs>),
    /// Measure model throughput (random weights at real shapes, or a checkpoint) and MFU.
    BenchModel(bench_model::BenchModelArgs),
    /// Serve the gRPC API (RewardService, health, reflection) with /metrics, until SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Load-test a server (started here, or --target) against in-process scoring.
    Bench(Box<bench::BenchArgs>),
    /// Rank N candidate images for one prompt (pairwise Bradley-Terry or pointwise).
    Rank(Box<rank::RankArgs>),
    /// Check the model against the transformers reference fixtures on a device (PASS/FAIL).
    Parity(parity::ParityArgs),
    /// Show what loading a checkpoint chooses (template, tokenizer, tiling, answer ids, rope)
    /// and why, without reading the weights.
    CheckModel(Box<check_model::CheckModelArgs>),
}

fn main() -> std::process::ExitCode {
    let matches = bench::without_unused_flags(Cli::command()).get_matches();
    if let Some(("bench", sub)) = matches.subcommand() {
        bench::refuse_unused_flags(sub);
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Score(args) => score::run(*args),
        Command::BenchModel(args) => bench_model::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Rank(args) => rank::run(*args),
        Command::Parity(args) => parity::run(args),
        Command::CheckModel(args) => check_model::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // A clap error prints itself (with its own `error:` and usage tip).
            if let Some(clap_err) = err.downcast_ref::<clap::Error>() {
                let _ = clap_err.print();
            } else {
                notes::fatal(&err);
            }
            std::process::ExitCode::from(2)
        }
    }
}
