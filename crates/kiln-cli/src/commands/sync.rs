//! `kiln sync`: a finished, interrupted or offline run sent to its trackers from `metrics.jsonl`.

use std::path::PathBuf;

use anyhow::Result;

/// Send a run to the trackers of its config (TensorBoard, MLflow) from its metrics.jsonl: what
/// a run could not send while training (a server that was down), or a run trained with tracking
/// off (turn it on with --set). Sending again sends nothing new.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory.
    run: PathBuf,
    /// Override a `[tracking]` key of the run's config, e.g. --set tracking.mlflow=http://127.0.0.1:5000
    /// (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Sends the run and prints a JSON summary.
pub fn exec(args: Args) -> Result<()> {
    if let Some(key) = args
        .overrides
        .iter()
        .map(|o| o.split_once('=').map_or(o.as_str(), |(k, _)| k.trim()))
        .find(|k| !k.starts_with("tracking."))
    {
        anyhow::bail!("--set {key}: kiln sync changes only tracking.* keys; the run's other keys are what it trained with");
    }
    let report = kiln_train::tracked::sync(&args.run, &args.overrides)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
