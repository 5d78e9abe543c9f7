//! `kiln sweep`: trials of a base config, ranked by a metric.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_core::Config;
use kiln_track::sweep::{run, RunOptions};

use super::stop_on_signals;

/// Run a sweep file's trials (each an ordinary run in the sweep's directory) and print them
/// ranked by its metric. Run again, it skips finished trials, resumes interrupted ones from their
/// checkpoint and starts the rest. Prints the table, and with --json the sweep as JSON.
#[derive(clap::Args)]
pub struct Args {
    /// The sweep file (see configs/sweeps/smoke.toml).
    sweep: PathBuf,
    /// Trials at a time; the cores are split between them.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print the outcome as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs the sweep.
pub fn exec(args: Args) -> Result<()> {
    if args.jobs == 0 {
        anyhow::bail!("--jobs: must be at least 1");
    }
    let stop = stop_on_signals()?;
    let check = |base: &Path, overrides: &[String]| Config::load(base, overrides).map(drop);
    let opts = RunOptions {
        kiln: std::env::current_exe().context("cannot find the kiln binary")?,
        jobs: args.jobs,
        stop,
        check: Box::new(check),
    };
    let outcome = run(&args.sweep, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", outcome.state.table());
        match &outcome.best_config {
            Some(best) => println!("best: {}", best.display()),
            None if !outcome.complete => println!(
                "interrupted: run `kiln sweep {}` again to continue",
                args.sweep.display()
            ),
            None => println!("no trial finished"),
        }
    }
    if !outcome.complete {
        anyhow::bail!(
            "the sweep was interrupted; run it again to continue (finished trials are kept)"
        );
    }
    Ok(())
}
