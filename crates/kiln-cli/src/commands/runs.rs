//! `kiln runs`: a table of runs.

use std::path::PathBuf;

use anyhow::Result;

/// List the runs under a directory (default: checkpoints): name, status, steps, training time,
/// the best validation metric, the test metrics, and the hyperparameters that differ between them.
#[derive(clap::Args)]
pub struct Args {
    /// A directory of runs (or one run).
    #[arg(default_value = "checkpoints")]
    dir: PathBuf,
    /// Print JSON (one array of runs) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Prints the table.
pub fn exec(args: Args) -> Result<()> {
    let rows = kiln_track::runs::list(&args.dir)?;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else if rows.is_empty() {
        println!("no runs in {}", args.dir.display());
    } else {
        println!("{}", kiln_track::runs::table(&rows));
    }
    Ok(())
}
