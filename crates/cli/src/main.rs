//! `rewarddance`: the RewardDance reward service's one binary.
//!
//! Subcommands: `score` (score items in-process and print JSON). Every flag has a
//! `REWARDDANCE_*` environment variable.

mod evaluate;
mod model_args;
mod score;

use clap::{Parser, Subcommand};

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
    Score(score::ScoreArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => score::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
