//! Kiln's side of the training-step benchmark (the PyTorch side is `torch_ref.py`; `run.py`
//! runs both and writes benches/results/).
//!
//! `kiln-bench --backend flex|ndarray|wgpu|cuda --model mlp|cnn|resnet|gpt [--batch 64] [--warmup 5]
//! [--steps 30]`, and for the GPT `[--vocab 65] [--n-layer 4] [--n-head 4] [--n-embd 128]
//! [--block 64] [--dropout 0] [--bias 1] [--tie 1] [--precision f32|f16|bf16]`, plus
//! `[--framework kiln|burn] [--slowdown F] [--batches N] [--data CONFIG]`, prints one JSON line.
//! The step is Kiln's own `train_step` (forward, cross-entropy, backward, AdamW) on a fixed
//! batch, the same work as the reference; `--batches N` (MLP and CNN) cycles through `N`
//! different batches instead, as a training loop's fresh data does (one batch stays in cache).
//! `--data CONFIG` takes those batches from the training stream of a `kiln train` config (the
//! first `N`, loaded, standardized and moved to the device before the clock starts), so the
//! step sees exactly the data `kiln train CONFIG` does (`benches/loop_cost.py`).
//! `--framework burn` runs the same models written with burn's own modules, loss and
//! optimizer instead (`burn_loop.rs`), in this same binary.

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use kiln_core::config::{OptimizerSection, Precision};
use kiln_core::{dispatch, BackendKind, BackendTask};
use kiln_models::{
    Activation, CnnConfig, DataShape, GptConfig, Input, Labels, MlpConfig, MlpKind, Model,
    ModelConfig, NormKind, Pooling, PositionKind, ResNetConfig, TrainModel,
};
use kiln_train::optim::Optim;
use kiln_train::scaler::LossScale;
use kiln_train::step::train_step;

mod burn_loop;
mod cpu_time;

use cpu_time::process_cpu_seconds;

struct Bench {
    /// `kiln` (Kiln's train_step) or `burn` (the bare burn loop).
    framework: String,
    model: String,
    batch: usize,
    warmup: usize,
    steps: usize,
    gpt: GptConfig,
    vocab: usize,
    precision: Precision,
    /// Each timed step is made this many times longer by busy-waiting (to check that the CI
    /// guard catches a slowdown); 1 = none.
    slowdown: f64,
    /// Different input batches the steps cycle through (1: the same batch every step).
    batches: usize,
    /// A `kiln train` config whose training batches the steps use instead of synthetic ones.
    data: Option<kiln_core::config::Config>,
}

fn main() -> Result<()> {
    kiln_core::alloc::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let num = |flag: &str, default: &str| -> Result<usize> {
        get(flag, default)
            .parse()
            .with_context(|| format!("{flag}: expected a whole number"))
    };
    let backend: BackendKind = get("--backend", "flex").parse()?;
    let gpt = GptConfig {
        n_layer: num("--n-layer", "4")?,
        n_head: num("--n-head", "4")?,
        n_embd: num("--n-embd", "128")?,
        block_size: num("--block", "64")?,
        dropout: get("--dropout", "0").parse().context("--dropout")?,
        bias: num("--bias", "1")? == 1,
        tie_weights: num("--tie", "1")? == 1,
        vocab_size: None,
        gelu: None,
        norm: None,
        norm_epsilon: None,
        position: None,
        rope_theta: None,
        mlp: None,
        mlp_hidden: None,
        n_kv_head: None,
        init_from: None,
        lora: None,
    };
    // `--style llama`: RMSNorm, RoPE, SwiGLU and `--n-kv-head` key/value heads.
    let gpt = match get("--style", "gpt2").as_str() {
        "gpt2" => gpt,
        "llama" => GptConfig {
            norm: Some(NormKind::RmsNorm),
            position: Some(PositionKind::Rope),
            mlp: Some(MlpKind::SwiGlu),
            n_kv_head: Some(num("--n-kv-head", &gpt.n_head.to_string())?),
            ..gpt
        },
        other => bail!("--style {other}: choose gpt2 or llama"),
    };
    gpt.validate()?;
    let precision = match get("--precision", "f32").as_str() {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        "bf16" => Precision::Bf16,
        other => bail!("--precision {other}: choose f32, f16 or bf16"),
    };
    let framework = get("--framework", "kiln");
    if framework != "kiln" && framework != "burn" {
        bail!("--framework {framework}: choose kiln or burn");
    }
    let bench = Bench {
        framework,
        model: get("--model", "mlp"),
        batch: num("--batch", "64")?,
        warmup: num("--warmup", "5")?,
        steps: num("--steps", "30")?,
        gpt,
        vocab: num("--vocab", "65")?,
        precision,
        slowdown: get("--slowdown", "1")
            .parse()
            .context("--slowdown: expected a number")?,
        batches: num("--batches", "1")?,
        data: match args.iter().position(|a| a == "--data") {
            None => None,
            Some(i) => {
                let path = args.get(i + 1).context("--data: expected a config file")?;
                Some(
                    kiln_core::config::Config::load(std::path::Path::new(path), &[])
                        .with_context(|| format!("--data {path}"))?,
                )
            }
        },
    };
    if bench.batches == 0
        || (bench.batches > 1 && (bench.model == "gpt" || bench.framework == "burn"))
    {
        bail!(
            "--batches {}: expected at least 1, and more than 1 only for Kiln's mlp, cnn and resnet",
            bench.batches
        );
    }
    if bench.data.is_some() && (bench.model == "gpt" || bench.framework == "burn") {
        bail!("--data: only for Kiln's mlp, cnn and resnet");
    }
    if bench.slowdown.is_nan() || bench.slowdown < 1.0 {
        bail!("--slowdown {}: expected a factor >= 1", bench.slowdown);
    }
    kiln_core::backend::check_precision(backend.resolve()?, precision)?;
    let out = dispatch(backend, bench)??;
    println!("{out}");
    Ok(())
}

/// The benchmark architectures: MLP 784-256-256-10; CNN conv 1→32 3x3, conv 32→64 3x3,
/// max-pool 2, linear 9216→128→10; ResNet-14 (`model.kind = "resnet"`'s defaults: stages
/// [2, 2, 2] of widths [16, 32, 64], batch norm, global average pooling).
fn model_section(name: &str) -> Result<ModelConfig> {
    Ok(match name {
        "mlp" => ModelConfig::Mlp(MlpConfig {
            hidden: vec![256, 256],
            activation: Activation::Relu,
            dropout: 0.0,
        }),
        "cnn" => ModelConfig::Cnn(CnnConfig {
            hidden: vec![128],
            activation: Activation::Relu,
            dropout: 0.0,
            channels: vec![32, 64],
            kernel_size: 3,
            padding: 0,
            pooling: Pooling::Max,
            pool_every: 2,
            batch_norm: false,
        }),
        "resnet" => ModelConfig::ResNet(ResNetConfig {
            stages: vec![2, 2, 2],
            widths: vec![16, 32, 64],
            dropout: 0.0,
        }),
        other => bail!("--model {other}: choose mlp, cnn, resnet or gpt"),
    })
}

impl BackendTask for Bench {
    type Output = Result<serde_json::Value>;

    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        backend: BackendKind,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("dispatch gives a device");
        let n = self.batch;
        let (spec, shape, optimizer) = if self.model == "gpt" {
            let shape = DataShape::Tokens {
                vocab_size: self.vocab,
            };
            // The reference's AdamW: weight decay 0.1 on the linear weights only.
            let optimizer = OptimizerSection {
                weight_decay: 0.1,
                ..OptimizerSection::default()
            };
            (ModelConfig::Gpt(self.gpt.clone()), shape, optimizer)
        } else {
            let shape = DataShape::Samples {
                sample_shape: vec![1, 28, 28],
                num_classes: 10,
            };
            (
                model_section(&self.model)?,
                shape,
                OptimizerSection::default(),
            )
        };
        let t = self.gpt.block_size;
        let mut extra = Vec::new();
        let (input, y, targets) = if self.model == "gpt" {
            let stream: Vec<i64> = (0..n * (t + 1))
                .map(|i| ((i * 7919) % self.vocab) as i64)
                .collect();
            let rows = |offset: usize| -> Vec<i64> {
                (0..n)
                    .flat_map(|r| stream[r * (t + 1) + offset..r * (t + 1) + offset + t].to_vec())
                    .collect()
            };
            let x = Tensor::<B, 2, Int>::from_data(TensorData::new(rows(0), [n, t]), &device);
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(rows(1), [n * t]), &device);
            (Input::Tokens(x), y, n * t)
        } else {
            let batch = |b: usize| {
                let x_host: Vec<f32> = (b * n * 784..(b + 1) * n * 784)
                    .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                    .collect();
                let y_host: Vec<i64> = (b * n..(b + 1) * n).map(|i| (i * 31 % 10) as i64).collect();
                let x = Tensor::<B, 2>::from_data(TensorData::new(x_host, [n, 784]), &device);
                let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y_host, [n]), &device);
                (Input::Features(x), y)
            };
            if let Some(config) = &self.data {
                let mut host = training_batches(config, n, self.batches)?.into_iter();
                let (x, y) = host.next().expect("at least one batch").to_device(&device);
                extra.extend(host.map(|b| b.to_device(&device)));
                (x, y, n)
            } else {
                extra.extend((1..self.batches).map(batch));
                let (x, y) = batch(0);
                (x, y, n)
            }
        };
        if self.framework == "burn" {
            return self.bare_burn::<B>(backend, input, y, targets, &device);
        }
        let mut model = Model::<B>::new(&spec, &shape, self.precision, 0, &device)?;
        let params = model.num_params();
        let mut optim = Optim::<B>::new(&optimizer).without_decay(model.no_decay());
        let batches: Vec<(Input<B>, Tensor<B, 1, Int>)> =
            std::iter::once((input, y)).chain(extra).collect();
        let batch_of = |step: usize| {
            let (input, y) = &batches[step % batches.len()];
            let input = match input {
                Input::Features(x) => Input::Features(x.clone()),
                Input::Tokens(x) => Input::Tokens(x.clone()),
            };
            (input, Labels::Classes(y.clone()))
        };

        // Like the reference, the loss is read (a device sync) only after the last step.
        let mut scaler = (self.precision == Precision::F16).then(LossScale::default);
        let mut run_steps = |count: usize, mut m: Model<B>, optim: &mut Optim<B>| {
            let mut loss = None;
            for step in 0..count {
                let step_started = std::time::Instant::now();
                let micro = vec![batch_of(step)];
                let (next, stats) =
                    train_step(m, optim, micro, targets, 1e-3, None, scaler.as_mut(), None)
                        .expect("a step without a communicator cannot fail");
                m = next;
                loss = Some(stats.loss_sum);
                if self.slowdown > 1.0 {
                    // The step's work is queued, not necessarily done, on lazy backends; the CPU
                    // backends compute eagerly, which is where the guard runs.
                    let extra = step_started.elapsed().mul_f64(self.slowdown - 1.0);
                    let until = std::time::Instant::now() + extra;
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
            }
            let loss = loss.map_or(0.0, |l| l.into_scalar().elem::<f64>() / targets as f64);
            (m, loss)
        };
        (model, _) = run_steps(self.warmup, model, &mut optim);
        let (start, cpu_start) = (std::time::Instant::now(), process_cpu_seconds());
        let (_model, last_loss) = run_steps(self.steps, model, &mut optim);
        let seconds = start.elapsed().as_secs_f64();
        let cpu_per_wall = (process_cpu_seconds() - cpu_start) / seconds;
        if !last_loss.is_finite() {
            bail!("loss diverged: {last_loss}");
        }
        let mut out = serde_json::json!({
            "framework": "kiln", "backend": backend.name(), "model": self.model,
            "batch": n, "steps": self.steps, "seconds": seconds,
            "steps_per_sec": self.steps as f64 / seconds,
            "samples_per_sec": (self.steps * n) as f64 / seconds,
            "params": params,
            "precision": self.precision.name(),
            "final_loss": last_loss,
            "cpu_per_wall": cpu_per_wall,
            "batches": self.batches,
            "data": if self.data.is_some() { "config" } else { "synthetic" },
        });
        if self.model == "gpt" {
            out["tokens_per_sec"] = serde_json::json!((self.steps * n * t) as f64 / seconds);
        }
        Ok(out)
    }
}

/// The first `count` batches of `config`'s training stream (one worker), as `kiln train`
/// prepares them: each must hold `rows` samples of 784 features (the benchmark's input).
fn training_batches(
    config: &kiln_core::config::Config,
    rows: usize,
    count: usize,
) -> Result<Vec<kiln_train::data::HostBatch>> {
    use kiln_train::TrainData;
    let data = kiln_train::data::RunData::load(config)?;
    let start = Default::default();
    let mut stream = data.train_stream(config, kiln_data::Shard::default(), &start)?;
    (0..count)
        .map(|k| {
            let b = stream.next_batch()?.batch;
            match &b.input {
                kiln_train::data::HostInput::Features { x, rows: r } if *r == rows && x.len() == rows * 784 => Ok(b),
                _ => bail!(
                    "--data: batch {k} of the config's training stream is not {rows} samples of 784 features (set data.batch_size = {rows}, and use 28x28 images)"
                ),
            }
        })
        .collect()
}

impl Bench {
    /// The same batch through the bare burn loop (`burn_loop.rs`).
    fn bare_burn<B: AutodiffBackend>(
        &self,
        backend: BackendKind,
        input: Input<B>,
        y: Tensor<B, 1, Int>,
        targets: usize,
        device: &B::Device,
    ) -> Result<serde_json::Value> {
        if self.precision != Precision::F32 {
            bail!("--framework burn runs in f32 only (burn has no autocast)");
        }
        let g = &self.gpt;
        let (seconds, loss, params) = match (self.model.as_str(), input) {
            ("mlp", Input::Features(x)) => burn_loop::train(
                burn_loop::mlp::<B>(device),
                burn_loop::mlp_forward,
                x,
                y,
                0.0,
                self.warmup,
                self.steps,
            ),
            ("cnn", Input::Features(x)) => burn_loop::train(
                burn_loop::cnn::<B>(device),
                burn_loop::cnn_forward,
                x,
                y,
                0.0,
                self.warmup,
                self.steps,
            ),
            ("gpt", Input::Tokens(x)) => burn_loop::train(
                burn_loop::gpt::<B>(
                    self.vocab,
                    g.n_layer,
                    g.n_head,
                    g.n_embd,
                    g.block_size,
                    device,
                ),
                burn_loop::gpt_forward,
                x,
                y,
                0.1,
                self.warmup,
                self.steps,
            ),
            (other, _) => bail!("--framework burn: no bare burn {other}"),
        };
        if !loss.is_finite() {
            bail!("loss diverged: {loss}");
        }
        let n = self.batch;
        let mut out = serde_json::json!({
            "framework": "burn", "backend": backend.name(), "model": self.model,
            "batch": n, "steps": self.steps, "seconds": seconds,
            "steps_per_sec": self.steps as f64 / seconds,
            "samples_per_sec": (self.steps * n) as f64 / seconds,
            "params": params, "precision": "f32", "final_loss": loss,
        });
        if self.model == "gpt" {
            out["tokens_per_sec"] = serde_json::json!(targets as f64 * self.steps as f64 / seconds);
        }
        Ok(out)
    }
}
