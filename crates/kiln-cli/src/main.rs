//! `kiln`: train, evaluate, sample and export models from config files. Each command is a
//! module of [`commands`] (its flags and an `exec` that calls Kiln's libraries); flags that
//! several commands share are in [`args`].

mod args;
mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::{
    drift, eval, export, generate, launch, plot, predict, runs, serve, sweep, sync, tokenize, train,
};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train deep-learning models from config files on CPUs and GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Train(train::Args),
    Launch(launch::Args),
    Eval(eval::Args),
    Generate(generate::Args),
    Export(export::Args),
    Predict(predict::Args),
    Drift(drift::Args),
    Serve(serve::Args),
    Tokenize(tokenize::Args),
    Sync(sync::Args),
    Plot(plot::Args),
    Runs(runs::Args),
    Sweep(sweep::Args),
}

fn main() -> ExitCode {
    // First, before anything is allocated (kiln_core::alloc explains why).
    kiln_core::alloc::tune();
    // Data-parallel workers other than rank 0 only report warnings and errors.
    let rank = kiln_dist::launcher_rank(|k| std::env::var(k).ok()).unwrap_or(0);
    let level = if rank == 0 { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match Cli::parse().command {
        Command::Train(args) => train::exec(args),
        Command::Launch(args) => launch::exec(args),
        Command::Eval(args) => eval::exec(args),
        Command::Generate(args) => generate::exec(args),
        Command::Export(args) => export::exec(args),
        Command::Predict(args) => predict::exec(args),
        Command::Drift(args) => drift::exec(args),
        Command::Serve(args) => serve::exec(args),
        Command::Tokenize(args) => tokenize::exec(args),
        Command::Sync(args) => sync::exec(args),
        Command::Plot(args) => plot::exec(args),
        Command::Runs(args) => runs::exec(args),
        Command::Sweep(args) => sweep::exec(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
