//! Kiln's step-based training loop, generic over the autodiff backend: fresh or resumed from a
//! checkpoint, checkpointing in the background, stopping cleanly on a signal.

mod open;
mod steps;
mod window;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use kiln_core::{BackendKind, Config, RunDir};
use kiln_dist::Communicator;
use kiln_models::{Model, ModelConfig, TrainModel};
use serde::Serialize;

use crate::checkpoint::{DataPosition, ParamTable, TrainState};
use crate::data::{RunData, TrainData, TrainStream};
use crate::events::{ResumeEvent, SharedSink, Sinks};
use crate::optim::Optim;
use crate::parts::{BestTracker, CheckpointPolicy, EvalSchedule};
use crate::resume::ResumeFrom;
use crate::saver::Saver;
use crate::scaler::LossScale;
use crate::schedule::LrSchedule;
use crate::system::SystemSampler;
use kiln_infer::EvalResult;

use window::Window;

/// How a run is started and stopped, besides its config.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// The checkpoint to continue from (none starts a new run).
    pub resume: Option<ResumeFrom>,
    /// Resume even though the checkpoint was written under a different config.
    pub force: bool,
    /// Set (by SIGINT/SIGTERM) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Stop after this step with a checkpoint, as if preempted (for time-sliced job queues).
    pub until_step: Option<usize>,
    /// Sinks of the caller's, after `metrics.jsonl` and the console (rank 0 alone uses them).
    pub sinks: Vec<SharedSink>,
}

/// What a run reports when it returns.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// "completed", "interrupted" (by a signal) or "paused" (`--until-step`).
    pub status: &'static str,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The step the run stopped after.
    pub steps: usize,
    /// `train.max_steps`.
    pub total_steps: usize,
    /// The checkpoint's step when the run resumed.
    pub resumed_from: Option<usize>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// Seconds the loop has waited for the data loader over the whole run (resumed attempts
    /// included).
    pub data_wait_seconds: f64,
    /// Data-parallel workers (1 alone) and how they exchanged gradients.
    pub workers: usize,
    /// `single`, `burn-collective`, `mpi` or `nccl`.
    pub engine: &'static str,
    /// The last validation result.
    pub valid: Option<EvalResult>,
    /// Only when the run completed.
    pub test: Option<EvalResult>,
}

/// Where a run begins: step 0 of a fresh run, or a verified checkpoint.
struct Start<B: AutodiffBackend, M> {
    /// Rank 0's run directory (other workers write nothing).
    run: Option<RunDir>,
    model: M,
    optim: Optim<B>,
    step: usize,
    state: Option<TrainState>,
    /// The event that records a resume, for the sinks.
    resume_event: Option<ResumeEvent>,
}

/// Trains the run described by `config` on `device` and evaluates it on the test split.
///
/// `comm` connects the data-parallel workers of the run (`Single` alone): each takes its shard
/// of every batch, gradients and metrics are summed over all of them, and rank 0 alone writes
/// metrics, progress and checkpoints. Every worker returns the same summary.
pub fn train<B: AutodiffBackend>(
    config: &Config,
    device: B::Device,
    backend: BackendKind,
    options: TrainOptions,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<TrainSummary> {
    let data = RunData::load(config)?;
    let fresh = options.resume.is_none();
    train_with(
        config,
        &data,
        &|config: &Config, data: &RunData, device: &B::Device| {
            builtin_model_starting::<B>(config, data, device, fresh)
        },
        device,
        backend,
        options,
        comm,
    )
}

/// The built-in model of `config`'s `[model]` section for `data`: what [`train`] trains. A GPT
/// with `model.init_from` starts from that Hugging Face folder's weights.
pub fn builtin_model<B: AutodiffBackend>(
    config: &Config,
    data: &RunData,
    device: &B::Device,
) -> Result<Model<B>> {
    builtin_model_starting(config, data, device, true)
}

/// [`builtin_model`]; `fresh`: the run starts at step 0 (a resumed run's weights come from its
/// checkpoint, so `model.init_from` is not read again).
pub(crate) fn builtin_model_starting<B: AutodiffBackend>(
    config: &Config,
    data: &RunData,
    device: &B::Device,
    fresh: bool,
) -> Result<Model<B>> {
    let spec = ModelConfig::of(config)?;
    let model = Model::<B>::new(
        &spec,
        &data.shape(),
        config.train.precision,
        config.run.seed,
        device,
    )?;
    match (&spec, &model) {
        // A fresh run starts from the folder's weights; a LoRA fine-tune's frozen base comes from
        // there on resume too (its checkpoints hold only the adapters).
        (ModelConfig::Gpt(gpt), Model::Gpt(built))
            if (fresh || gpt.lora.is_some()) && gpt.init_from.is_some() =>
        {
            let dir = std::path::Path::new(gpt.init_from.as_deref().unwrap_or_default());
            let tensors = kiln_hf::import::read_weights(dir, &built.shape)?;
            let bytes = kiln_hf::import::to_safetensors(&tensors)?;
            let origin = format!("of model.init_from = {:?}", dir.display().to_string());
            kiln_infer::weights::load_bytes_trainable(model, bytes, &origin)
        }
        _ => Ok(model),
    }
}

/// [`train`] on any data with a model of the caller's, built by `build` from the run's config
/// and data on the worker's device: any [`TrainModel`] that takes the data's host batches, with
/// all of the loop (checkpoints, exact resume, signals, `until_step`, accumulation, clipping,
/// schedules, data parallelism, evaluation, the best checkpoint, f16 loss scaling). The data is
/// Kiln's own ([`RunData::load`] reads the config's `[data]` section) or the caller's
/// ([`crate::SourceData`]). On resume the built model's weights are replaced by the
/// checkpoint's.
pub fn train_with<B, D, M, F>(
    config: &Config,
    data: &D,
    build: &F,
    device: B::Device,
    backend: BackendKind,
    options: TrainOptions,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<TrainSummary>
where
    B: AutodiffBackend,
    D: TrainData + ?Sized,
    M: TrainModel<B, HostBatch = D::Batch> + AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
    F: Fn(&Config, &D, &B::Device) -> Result<M> + ?Sized,
{
    kiln_core::backend::check_precision(backend, config.train.precision)?;
    // Before the weights are allocated (once per process): see kiln_core::alloc.
    kiln_core::alloc::tune();
    // The workers of one process build their models one at a time, each right after seeding
    // the backend, and draw every initial weight before the next one starts (burn's layers draw
    // theirs lazily, at first use): a model initialized with the backend's random numbers then
    // starts from the same weights on every worker and in every run of the same seed.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let model = {
        let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&device, config.run.seed);
        let model = build(config, data, &device)?;
        kiln_models::materialize(&model);
        model
    };
    train_loop(config, model, data, device, backend, options, comm)
}

/// The loop itself, from a built model: each step trains, then the parts decide whether to log,
/// evaluate, checkpoint or stop.
fn train_loop<B, D, M>(
    config: &Config,
    model: M,
    data: &D,
    device: B::Device,
    backend: BackendKind,
    options: TrainOptions,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<TrainSummary>
where
    B: AutodiffBackend,
    D: TrainData + ?Sized,
    M: TrainModel<B, HostBatch = D::Batch> + AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
{
    let started = Instant::now();
    let (mut lp, model) = Loop::begin(config, model, data, device, backend, &options, comm)?;
    let result = lp
        .steps(model, &options.stop)
        .and_then(|(model, status)| lp.finish(&model, status, started));
    if let Err(e) = &result {
        lp.fail(e, started);
    }
    result
}

/// Everything the loop carries from step to step besides the model.
struct Loop<'a, B: AutodiffBackend, D: TrainData + ?Sized> {
    config: &'a Config,
    data: &'a D,
    device: B::Device,
    comm: &'a mut dyn Communicator<B::InnerBackend>,
    world: usize,
    run_path: PathBuf,
    /// "samples" or "tokens".
    unit: &'static str,
    table: ParamTable,
    /// A LoRA fine-tune's base, recorded in every checkpoint.
    base: Option<kiln_infer::base::BaseRef>,
    optim: Optim<B>,
    schedule: LrSchedule,
    /// The schedule's horizon: the run's length when it started.
    horizon: usize,
    total_steps: usize,
    /// Where this invocation stops: the end, or `until_step`.
    stop_at: usize,
    first_step: usize,
    step: usize,
    /// `None` for a stream source.
    batches_per_epoch: Option<usize>,
    /// Micro-batches taken from the stream so far (of all steps, resumed ones included).
    micro_done: usize,
    position: DataPosition,
    loader: Box<dyn TrainStream<D::Batch>>,
    window: Window<B>,
    loss_scale: Option<LossScale>,
    best: BestTracker,
    last_valid: Option<EvalResult>,
    data_wait_total: Duration,
    eval_schedule: EvalSchedule,
    checkpoints: CheckpointPolicy,
    dropout_seed: u64,
    /// Where the run's events go: rank 0's `metrics.jsonl`, console and the caller's sinks
    /// (other workers have none).
    sinks: Sinks,
    /// Rank 0's system metrics (`tracking.system_metrics`; other workers report none).
    system: Option<SystemSampler>,
    /// Rank 0's checkpoint writer (other workers write nothing).
    saver: Option<Saver>,
}
