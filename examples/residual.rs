//! A model that Kiln does not ship, trained through Kiln's loop from a user's own program: a
//! residual MLP (pre-norm blocks, `x + fc(relu(norm(x)))`) on the wine table of
//! `configs/wine-mlp.toml`, paused half-way and resumed, with Kiln's checkpoints, schedule,
//! clipping and evaluation.
//!
//!     cargo run --release --example residual
//!
//! The run's `[model]` section is not used: the model is this file's. The run directory is
//! target/examples/wine-residual.

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use kiln_core::{BackendKind, Config};
use kiln_models::loss::batch_sums;
use kiln_models::{DataShape, HostBatch, Input, LossOutput, TrainModel};
use kiln_train::{train_with, ResumeFrom, RunData, TrainOptions, TrainSummary};

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    norm: LayerNorm<B>,
    fc: Linear<B>,
}

#[derive(Module, Debug)]
pub struct ResidualMlp<B: Backend> {
    embed: Linear<B>,
    blocks: Vec<Block<B>>,
    head: Linear<B>,
}

impl<B: Backend> ResidualMlp<B> {
    pub fn new(
        features: usize,
        width: usize,
        depth: usize,
        classes: usize,
        device: &B::Device,
    ) -> Self {
        let block = || Block {
            norm: LayerNormConfig::new(width).init(device),
            fc: LinearConfig::new(width, width).init(device),
        };
        Self {
            embed: LinearConfig::new(features, width).init(device),
            blocks: (0..depth).map(|_| block()).collect(),
            head: LinearConfig::new(width, classes).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut x = self.embed.forward(x);
        for b in &self.blocks {
            x = x.clone() + b.fc.forward(relu(b.norm.forward(x)));
        }
        self.head.forward(x)
    }
}

/// What Kiln's loop needs: a loss (summed over the batch) and the sums behind the metrics.
impl<B: Backend> TrainModel<B> for ResidualMlp<B> {
    type HostBatch = HostBatch;
    type Batch = (Input<B>, Tensor<B, 1, Int>);

    fn device_batch(batch: HostBatch, device: &B::Device) -> Self::Batch {
        batch.to_device(device)
    }

    fn loss(&self, (input, targets): Self::Batch) -> LossOutput<B> {
        let Input::Features(x) = input else {
            unreachable!("table data gives features")
        };
        let (loss_sum, correct) = batch_sums(self.forward(x), targets);
        LossOutput {
            loss_sum,
            sums: vec![correct.float()],
        }
    }

    fn sum_names(&self) -> Vec<String> {
        vec!["accuracy".into()]
    }
}

/// Builds the model for a run's data on a worker's device (each data-parallel worker calls it).
pub fn build<B: Backend>(_: &Config, data: &RunData, device: &B::Device) -> Result<ResidualMlp<B>> {
    let DataShape::Samples {
        sample_shape,
        num_classes,
    } = data.shape()
    else {
        anyhow::bail!("the residual MLP needs sample data, not tokens");
    };
    Ok(ResidualMlp::new(
        sample_shape.iter().product(),
        32,
        2,
        num_classes,
        device,
    ))
}

pub type Train = Autodiff<Flex>;

/// Trains `config` (resuming `resume` if given) until `until_step` on one CPU device.
pub fn run(
    config: &Config,
    resume: Option<ResumeFrom>,
    until_step: Option<usize>,
) -> Result<TrainSummary> {
    let options = TrainOptions {
        resume,
        until_step,
        ..Default::default()
    };
    let comm = &mut kiln_dist::Single;
    train_with::<Train, _, _>(
        config,
        &build,
        Default::default(),
        BackendKind::Flex,
        options,
        comm,
    )
}

fn main() -> Result<()> {
    let sets = [
        "run.name=\"wine-residual\"",
        "run.output_dir=\"target/examples\"",
        "run.overwrite=true",
    ];
    let config = Config::load("configs/wine-mlp.toml".as_ref(), &sets.map(String::from))?;
    let paused = run(&config, None, Some(200))?;
    println!(
        "paused at step {} of {}: {}",
        paused.steps, paused.total_steps, paused.status
    );
    let done = run(&config, Some(ResumeFrom::Latest(paused.run_dir)), None)?;
    let test = done
        .test
        .expect("a completed run is evaluated on its test split");
    println!("resumed and completed: test {test:?}");
    Ok(())
}
