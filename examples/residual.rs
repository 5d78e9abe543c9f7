//! A model that Kiln does not ship, trained through Kiln's loop from a user's own program: a
//! residual MLP (pre-norm blocks, `x + fc(relu(norm(x)))`) on the wine table of
//! `configs/wine-mlp.toml`, paused part-way and resumed, with Kiln's checkpoints, schedule,
//! clipping and evaluation. Its matrix products follow `train.precision` through Kiln's
//! precision helper (f16 or bf16 products on f32 weights, on backends that have them).
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
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use kiln_core::config::Precision;
use kiln_core::{BackendKind, Config};
use kiln_models::loss::batch_sums;
use kiln_models::precision::linear;
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
    #[module(skip)]
    precision: Precision,
}

impl<B: Backend> ResidualMlp<B> {
    pub fn new(
        d_in: usize,
        width: usize,
        depth: usize,
        classes: usize,
        p: Precision,
        device: &B::Device,
    ) -> Self {
        let block = || Block {
            norm: LayerNormConfig::new(width).init(device),
            fc: LinearConfig::new(width, width).init(device),
        };
        let (embed, head) = (
            LinearConfig::new(d_in, width),
            LinearConfig::new(width, classes),
        );
        let blocks = (0..depth).map(|_| block()).collect();
        Self {
            embed: embed.init(device),
            blocks,
            head: head.init(device),
            precision: p,
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let p = self.precision;
        let mut x = linear(&self.embed, x, p);
        for b in &self.blocks {
            x = x.clone() + linear(&b.fc, relu(b.norm.forward(x)), p);
        }
        linear(&self.head, x, p)
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
pub fn build<B: Backend>(
    config: &Config,
    data: &RunData,
    device: &B::Device,
) -> Result<ResidualMlp<B>> {
    let DataShape::Samples {
        sample_shape,
        num_classes,
    } = data.shape()
    else {
        anyhow::bail!("the residual MLP needs sample data, not tokens");
    };
    let (d_in, p) = (sample_shape.iter().product(), config.train.precision);
    Ok(ResidualMlp::new(d_in, 32, 2, num_classes, p, device))
}

/// Trains `config` (resuming `resume` if given) until `until_step` on one device of `B`.
pub fn run<B: AutodiffBackend>(
    config: &Config,
    backend: BackendKind,
    resume: Option<ResumeFrom>,
    until_step: Option<usize>,
) -> Result<TrainSummary> {
    let options = TrainOptions {
        resume,
        until_step,
        ..Default::default()
    };
    let comm = &mut kiln_dist::Single;
    train_with::<B, _, _>(config, &build, Default::default(), backend, options, comm)
}

fn main() -> Result<()> {
    let sets = [
        "run.name=\"wine-residual\"",
        "run.output_dir=\"target/examples\"",
        "run.overwrite=true",
    ];
    let config = Config::load("configs/wine-mlp.toml".as_ref(), &sets.map(String::from))?;
    type Cpu = Autodiff<Flex>;
    let paused = run::<Cpu>(&config, BackendKind::Flex, None, Some(200))?;
    println!(
        "paused at step {} of {}: {}",
        paused.steps, paused.total_steps, paused.status
    );
    let resume = Some(ResumeFrom::Latest(paused.run_dir));
    let done = run::<Cpu>(&config, BackendKind::Flex, resume, None)?;
    let test = done
        .test
        .expect("a completed run is evaluated on its test split");
    println!("resumed and completed: test {test:?}");
    Ok(())
}
