//! A model that Kiln does not ship, trained through Kiln's loop from a user's own program: a
//! residual MLP (pre-norm blocks, `x + fc(relu(norm(x)))`) on the wine table (Kiln's own data,
//! the `[data]` section of examples/residual.toml), paused part-way and resumed, with Kiln's
//! checkpoints, schedule, clipping and evaluation. Its matrix products follow `train.precision`
//! through Kiln's precision helper (f16 or bf16 products on f32 weights, on backends that have
//! them). Then the trained model is exported with int8 weights, loaded back and evaluated, all
//! from this program.
//!
//!     cargo run --release --example residual
//!
//! The run's `[model]` section is this model's own (`width`, `blocks`: [`ResidualConfig`]), read
//! with `config.model.parse()`. The run directory is target/examples/wine-residual.

use anyhow::{Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use kiln_core::config::Precision;
use kiln_core::{BackendKind, Config};
use kiln_export::{export_module, load_module, Scheme};
use kiln_models::loss::batch_sums;
use kiln_models::precision::linear;
use kiln_models::{HostBatch, Input, LossOutput, TrainModel};
use kiln_train::{evaluate, weights, RunData, Split, Trainer};

/// This model's `[model]` section.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualConfig {
    pub width: usize,
    pub blocks: usize,
}

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
    /// `c.blocks` blocks of width `c.width` between `d_in` inputs and `classes` outputs.
    pub fn new(
        c: &ResidualConfig,
        d_in: usize,
        classes: usize,
        p: Precision,
        dev: &B::Device,
    ) -> Self {
        let block = || Block {
            norm: LayerNormConfig::new(c.width).init(dev),
            fc: LinearConfig::new(c.width, c.width).init(dev),
        };
        let blocks = (0..c.blocks).map(|_| block()).collect();
        let embed = LinearConfig::new(d_in, c.width).init(dev);
        let head = LinearConfig::new(c.width, classes).init(dev);
        Self {
            embed,
            blocks,
            head,
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
        LossOutput::new(loss_sum, vec![correct.float()])
    }

    fn sum_names(&self) -> Vec<String> {
        vec!["accuracy".into()]
    }
}

/// Builds the model for a run's data on a worker's device (each data-parallel worker calls it).
pub fn build<B: Backend>(
    config: &Config,
    data: &RunData,
    dev: &B::Device,
) -> Result<ResidualMlp<B>> {
    let (d_in, classes) = data.shape().features_and_classes("the residual MLP")?;
    let c = config.model.parse()?;
    Ok(ResidualMlp::new(
        &c,
        d_in,
        classes,
        config.train.precision,
        dev,
    ))
}

type Cpu = Autodiff<Flex>;

fn main() -> Result<()> {
    let config = Config::load("examples/residual.toml".as_ref(), &[])?;
    let fit = |t: Trainer| t.fit::<Cpu, _, _, _>(RunData::load(&config)?, build::<Cpu>);
    let paused = fit(Trainer::new(&config, BackendKind::Flex).until_step(200))?;
    println!("paused at step {} of {}", paused.steps, paused.total_steps);
    let done = fit(Trainer::new(&config, BackendKind::Flex).resume(&paused.run_dir))?;
    let accuracy = done.test.context("no test split")?.metrics["accuracy"];
    println!("resumed and completed: test accuracy {accuracy:.3}");

    // The trained model exported with int8 weights from this program, loaded back and evaluated.
    let (data, dev) = (RunData::load(&config)?, Default::default());
    let file = done
        .checkpoint
        .context("no checkpoint")?
        .join("model.safetensors");
    let trained = weights::load(build::<Flex>(&config, &data, &dev)?, &file)?;
    let out = done.run_dir.with_file_name("wine-residual-int8");
    let about = serde_json::to_value(&config.model)?;
    export_module(&trained, Scheme::Int8, about, &out, true)?;
    let (int8, _) = load_module(build::<Flex>(&config, &data, &dev)?, &out)?;
    let test = evaluate(&int8, data.eval_batches(Split::Test, &config), &dev)?;
    println!(
        "int8 export in {}: test accuracy {:.3}",
        out.display(),
        test.metrics["accuracy"]
    );
    Ok(())
}
