//! `kiln eval`: the loss and metrics of trained weights on a split of the run's data.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use kiln_core::rundir::TrainedRun;

use super::{on_device, OnDevice};
use crate::args::BackendArgs;

/// Evaluate trained weights; prints one JSON object with loss and accuracy.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its latest checkpoint), a step-<N> directory or a .safetensors file
    /// inside a run directory.
    weights: PathBuf,
    /// Which split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Test,
    Valid,
}

/// Prints the evaluation as one JSON line.
pub fn exec(args: Args) -> Result<()> {
    let run = TrainedRun::find(&args.weights)?;
    let split = match args.split {
        SplitArg::Test => kiln_infer::Split::Test,
        SplitArg::Valid => kiln_infer::Split::Valid,
    };
    let result = on_device(args.backend.kind()?, Eval { run, split })?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

struct Eval {
    run: TrainedRun,
    split: kiln_infer::Split,
}

impl OnDevice for Eval {
    type Output = serde_json::Value;
    fn run<B: Backend>(self, device: B::Device) -> Result<serde_json::Value> {
        kiln_infer::eval_run::<B>(&self.run.config, &self.run.weights, self.split, &device)
    }
}
