//! `kiln plot`: runs' metrics against the step, as a PNG.

use std::path::PathBuf;

use anyhow::Result;

/// Draw metrics of one or more runs against the step into a PNG: one panel per metric, the runs
/// overlaid with a legend. Prints a JSON summary (the series and their colours).
#[derive(clap::Args)]
pub struct Args {
    /// Run directories.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Metrics, as trackers name them: train/loss, valid/accuracy, test/loss, train/lr, ...
    #[arg(long, value_delimiter = ',', default_value = "train/loss,valid/loss")]
    metric: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
}

/// Draws the plot.
pub fn exec(args: Args) -> Result<()> {
    let plot = kiln_track::plot::plot(&args.runs, &args.metric, &args.out)?;
    println!("{}", serde_json::to_string(&plot)?);
    Ok(())
}
