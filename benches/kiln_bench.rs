//! Kiln's side of the CPU training-step benchmark (the PyTorch side is `torch_ref.py`; `run.py`
//! runs both and writes benches/results/).
//!
//! `kiln-bench --backend flex|ndarray --model mlp|cnn [--batch 64] [--warmup 5] [--steps 30]`
//! prints one JSON line. The step is Kiln's own `train_step` (forward, cross-entropy, backward,
//! AdamW) on a fixed random batch, the same work as the reference.

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use kiln_core::config::{Activation, ModelKind, ModelSection, OptimizerSection, Pooling};
use kiln_core::{dispatch, BackendKind, BackendTask};
use kiln_models::Model;
use kiln_train::optim::Optim;
use kiln_train::step::train_step;

struct Bench {
    model: String,
    batch: usize,
    warmup: usize,
    steps: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let backend: BackendKind = get("--backend", "flex").parse()?;
    let bench = Bench {
        model: get("--model", "mlp"),
        batch: get("--batch", "64").parse().context("--batch")?,
        warmup: get("--warmup", "5").parse().context("--warmup")?,
        steps: get("--steps", "30").parse().context("--steps")?,
    };
    let out = dispatch(backend, bench)??;
    println!("{out}");
    Ok(())
}

/// The benchmark architectures: MLP 784-256-256-10; CNN conv 1→32 3x3, conv 32→64 3x3,
/// max-pool 2, linear 9216→128→10.
fn model_section(name: &str) -> Result<ModelSection> {
    let mut m = ModelSection {
        kind: ModelKind::Mlp,
        hidden: vec![256, 256],
        activation: Activation::Relu,
        dropout: 0.0,
        channels: vec![],
        kernel_size: 3,
        padding: 0,
        pooling: Pooling::Max,
        pool_every: 2,
        batch_norm: false,
    };
    match name {
        "mlp" => {}
        "cnn" => {
            m.kind = ModelKind::Cnn;
            m.channels = vec![32, 64];
            m.hidden = vec![128];
        }
        other => bail!("--model {other}: choose mlp or cnn"),
    }
    Ok(m)
}

impl BackendTask for Bench {
    type Output = Result<serde_json::Value>;

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Self::Output {
        let spec = model_section(&self.model)?;
        let mut model = Model::<B>::new(&spec, &[1, 28, 28], 10, 0, &device)?;
        let mut optim = Optim::<B>::new(&OptimizerSection::default());
        let n = self.batch;
        let x_host: Vec<f32> = (0..n * 784)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let y_host: Vec<i64> = (0..n).map(|i| (i * 31 % 10) as i64).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(x_host, [n, 784]), &device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y_host, [n]), &device);

        // Like the reference, the loss is read (a device sync) only after the last step.
        let run_steps = |count: usize, mut m: Model<B>, optim: &mut Optim<B>| {
            let mut loss = None;
            for _ in 0..count {
                let (next, stats) = train_step(m, optim, x.clone(), y.clone(), 1e-3, None);
                m = next;
                loss = Some(stats.loss_sum);
            }
            let loss = loss.map_or(0.0, |l| l.into_scalar().elem::<f64>() / n as f64);
            (m, loss)
        };
        (model, _) = run_steps(self.warmup, model, &mut optim);
        let start = std::time::Instant::now();
        let (_model, last_loss) = run_steps(self.steps, model, &mut optim);
        let seconds = start.elapsed().as_secs_f64();
        if !last_loss.is_finite() {
            bail!("loss diverged: {last_loss}");
        }
        Ok(serde_json::json!({
            "framework": "kiln", "backend": backend.name(), "model": self.model,
            "batch": n, "steps": self.steps, "seconds": seconds,
            "steps_per_sec": self.steps as f64 / seconds,
            "samples_per_sec": (self.steps * n) as f64 / seconds,
            "final_loss": last_loss,
        }))
    }
}
