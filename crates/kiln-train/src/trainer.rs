//! Kiln's step-based training loop, generic over the autodiff backend.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor};
use kiln_core::rundir::RunInfo;
use kiln_core::{BackendKind, Config, RunDir};
use kiln_data::{Loader, LoaderConfig};
use kiln_models::Classifier;
use serde::Serialize;
use serde_json::json;

use crate::data::Splits;
use crate::eval::{batch_tensors, evaluate, EvalResult};
use crate::optim::Optim;
use crate::progress::Progress;
use crate::schedule::LrSchedule;
use crate::step::{train_step, StepStats};
use crate::weights;

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub seconds: f64,
    pub data_wait_seconds: f64,
    pub valid: Option<EvalResult>,
    pub test: EvalResult,
}

/// Trains the run described by `config` on `device` and evaluates it on the test split.
pub fn train<B: AutodiffBackend>(
    config: &Config,
    device: B::Device,
    backend: BackendKind,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let seed = config.run.seed;
    let splits = Splits::load(config)?;
    let info = RunInfo::new(backend.name(), &format!("{device:?}"), seed);
    let mut run = RunDir::create(config, &info)?;
    tracing::info!(
        "run {} on {backend} ({device:?}): {} train / {} valid / {} test samples",
        run.path().display(),
        splits.train.len(),
        splits.valid.len(),
        splits.test.len()
    );

    B::seed(&device, seed);
    let train_set = Arc::new(splits.train);
    let mut model = Classifier::<B>::new(
        &config.model,
        &train_set.sample_shape,
        train_set.num_classes,
        seed,
        &device,
    )?;
    tracing::info!("model: {} parameters", model.num_params());

    let d = &config.data;
    let mut loader = Loader::new(
        train_set.clone(),
        LoaderConfig {
            batch_size: d.batch_size,
            threads: d.loader_threads,
            prefetch: d.prefetch,
            shuffle: d.shuffle,
            seed,
        },
        0,
        0,
    );
    let t = &config.train;
    let total_steps = t
        .max_steps
        .unwrap_or_else(|| t.epochs.unwrap_or(1) * loader.batches_per_epoch());
    let eval_batch = d.eval_batch_size.unwrap_or(d.batch_size);
    let mut optim = Optim::<Classifier<B>, B>::new(&config.optimizer);
    let mut schedule = LrSchedule::new(&config.schedule, config.optimizer.lr, total_steps)?;
    let progress = Progress::new(total_steps, 0);

    let mut window = Window::<B>::new(&device);
    let mut data_wait_total = Duration::ZERO;
    let mut last_valid = None;
    let mut epoch = 0.0;
    for step in 1..=total_steps {
        let batch = loader.next_batch();
        epoch = batch.epoch as f64 + (batch.index + 1) as f64 / batch.batches_in_epoch as f64;
        let n = batch.y.len();
        let (x, y) = batch_tensors::<B>(batch, &device);

        kiln_models::dropout::reseed(seed, step as u64);
        let lr = schedule.next_lr();
        let (next, stats) = train_step(model, &mut optim, x, y, lr, t.grad_clip_norm);
        model = next;
        window.add(stats, n);

        let last = step == total_steps;
        let summary = if step % t.log_every == 0 || last {
            let wait = loader.take_wait_time();
            data_wait_total += wait;
            let stats = window.take();
            let mut event = json!({
                "step": step, "epoch": epoch, "split": "train",
                "loss": stats.loss, "accuracy": stats.accuracy, "lr": lr,
                "samples_per_sec": stats.samples_per_sec,
                "data_wait_secs": wait.as_secs_f64(),
            });
            if let Some(g) = stats.grad_norm {
                event["grad_norm"] = json!(g);
            }
            run.log_event(&event)?;
            Some(format!(
                "loss {:.4} acc {:.3} lr {lr:.2e} {:.0} samples/s",
                stats.loss, stats.accuracy, stats.samples_per_sec
            ))
        } else {
            None
        };
        progress.step(step, summary.as_deref());

        if (t.eval_every > 0 && step % t.eval_every == 0) || last {
            if !splits.valid.is_empty() {
                let r = evaluate(&model.valid(), &splits.valid, eval_batch, &device);
                run.log_event(&eval_event(step, epoch, "valid", &r))?;
                progress.message(&format!(
                    "step {step}: valid loss {:.4} accuracy {:.4}",
                    r.loss, r.accuracy
                ));
                last_valid = Some(r);
            }
            window.restart_clock();
        }
        let every = config.checkpoint.every_steps;
        if (every > 0 && step % every == 0) || last {
            save_checkpoint(&run, &model, step)?;
            window.restart_clock();
        }
    }
    progress.finish();
    drop(loader);

    let test = evaluate(&model.valid(), &splits.test, eval_batch, &device);
    run.log_event(&eval_event(total_steps, epoch, "test", &test))?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "done in {seconds:.1} s: test loss {:.4} accuracy {:.4}; waited {:.2} s for data in total; weights in {}",
        test.loss,
        test.accuracy,
        data_wait_total.as_secs_f64(),
        run.step_dir(total_steps).display()
    );
    Ok(TrainSummary {
        run_dir: run.path().to_path_buf(),
        steps: total_steps,
        seconds,
        data_wait_seconds: data_wait_total.as_secs_f64(),
        valid: last_valid,
        test,
    })
}

fn eval_event(step: usize, epoch: f64, split: &str, r: &EvalResult) -> serde_json::Value {
    json!({
        "step": step, "epoch": epoch, "split": split,
        "loss": r.loss, "accuracy": r.accuracy, "samples": r.samples,
    })
}

/// Writes `step-<N>/model.safetensors` under a temporary directory name, then renames it into
/// place and points `latest` at it.
fn save_checkpoint<B: AutodiffBackend>(
    run: &RunDir,
    model: &Classifier<B>,
    step: usize,
) -> Result<()> {
    let dir = run.step_dir(step);
    let tmp = dir.with_extension("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    weights::save(&model.valid(), &tmp.join("model.safetensors"))?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    run.set_latest(step)
}

/// Training statistics of the steps since the last log event, accumulated on the device so that
/// logging is the only synchronization.
struct Window<B: AutodiffBackend> {
    device: B::Device,
    loss_sum: Tensor<B::InnerBackend, 1>,
    correct: Tensor<B::InnerBackend, 1, Int>,
    samples: usize,
    since: Instant,
    grad_norm: Option<f64>,
}

struct WindowStats {
    loss: f64,
    accuracy: f64,
    samples_per_sec: f64,
    grad_norm: Option<f64>,
}

impl<B: AutodiffBackend> Window<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            device: device.clone(),
            loss_sum: Tensor::zeros([1], device),
            correct: Tensor::zeros([1], device),
            samples: 0,
            since: Instant::now(),
            grad_norm: None,
        }
    }

    fn add(&mut self, stats: StepStats<B>, n: usize) {
        self.loss_sum = self.loss_sum.clone() + stats.loss_sum;
        self.correct = self.correct.clone() + stats.correct;
        self.samples += n;
        self.grad_norm = stats.grad_norm.or(self.grad_norm);
    }

    /// Evaluation and checkpoint time does not count against training throughput.
    fn restart_clock(&mut self) {
        self.since = Instant::now();
    }

    fn take(&mut self) -> WindowStats {
        let fresh = Window::<B>::new(&self.device);
        let old = std::mem::replace(self, fresh);
        let n = old.samples.max(1) as f64;
        let loss = old.loss_sum.into_scalar().elem::<f64>() / n;
        let accuracy = old.correct.into_scalar().elem::<f64>() / n;
        WindowStats {
            loss,
            accuracy,
            samples_per_sec: n / old.since.elapsed().as_secs_f64().max(1e-9),
            grad_norm: old.grad_norm,
        }
    }
}
