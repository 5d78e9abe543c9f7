//! Kiln's step-based training loop, generic over the autodiff backend: fresh or resumed from a
//! checkpoint, checkpointing in the background, stopping cleanly on a signal.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use kiln_checkpoint::{find_resumable, remove_partial, verify, Verified};
use kiln_core::config::Precision;
use kiln_core::rundir::{host_name, RunInfo, WorkerDevice};
use kiln_core::{BackendKind, Config, RunDir};
use kiln_data::Shard;
use kiln_dist::Communicator;
use kiln_models::{Model, ModelConfig, Targets, TrainModel};
use serde::Serialize;

use crate::checkpoint::{
    check_fits, restore, train_state, DataPosition, OptimizerInfo, ParamTable, RngState,
    ScheduleState, TrainState, WindowState,
};
use crate::data::{RunData, Split, TrainData, TrainStream};
use crate::events::{
    EvalEvent, Event, ResumeEvent, RunEnd, RunStart, SharedSink, Sinks, Skipped, Status, TrainEvent,
};
use crate::optim::Optim;
use crate::parts::{stop_agreed, BestTracker, CheckpointPolicy, EvalSchedule};
use crate::resume::ResumeFrom;
use crate::saver::Saver;
use crate::scaler::LossScale;
use crate::schedule::LrSchedule;
use crate::sinks::{Console, Jsonl};
use crate::step::{train_step, StepStats};
use kiln_infer::{eval_sums, EvalResult, EvalSums};

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
    train_with(
        config,
        &data,
        &builtin_model::<B>,
        device,
        backend,
        options,
        comm,
    )
}

/// The built-in model of `config`'s `[model]` section for `data`: what [`train`] trains.
pub fn builtin_model<B: AutodiffBackend>(
    config: &Config,
    data: &RunData,
    device: &B::Device,
) -> Result<Model<B>> {
    Model::<B>::new(
        &ModelConfig::of(config)?,
        &data.shape(),
        config.train.precision,
        config.run.seed,
        device,
    )
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
    /// Rank 0's checkpoint writer (other workers write nothing).
    saver: Option<Saver>,
}

impl<'a, B: AutodiffBackend, D: TrainData + ?Sized> Loop<'a, B, D> {
    /// Starts a fresh run or resumes one: the run directory, the model and optimizer (loaded
    /// from the checkpoint on resume) and where the data, schedule and statistics continue.
    fn begin<M>(
        config: &'a Config,
        model: M,
        data: &'a D,
        device: B::Device,
        backend: BackendKind,
        options: &TrainOptions,
        comm: &'a mut dyn Communicator<B::InnerBackend>,
    ) -> Result<(Self, M)>
    where
        M: TrainModel<B> + AutodiffModule<B>,
    {
        let (rank, world) = (comm.rank(), comm.world());
        let lead = rank == 0;
        let table = ParamTable::of(&model);
        let (start, run_path) = open_run(
            config, model, &table, data, &device, backend, options, &mut *comm,
        )?;
        let st = start.state;
        let t = &config.train;
        let batches_per_epoch = data.batches_per_epoch(config.data.batch_size * world);
        let total_steps = run_length(config, batches_per_epoch)?;
        let horizon = st
            .as_ref()
            .map_or(total_steps, |s| s.schedule.horizon_steps);
        if horizon != total_steps && lead {
            tracing::info!(
                "the run now ends at step {total_steps}; its learning-rate schedule keeps the horizon of {horizon} steps it started with"
            );
        }
        let schedule = schedule_at(config, horizon, start.step, st.as_ref(), options.force)?;
        let position = resume_position(st.as_ref(), batches_per_epoch);
        let micro_done = position.epoch * position.batches_per_epoch + position.batch_in_epoch;
        let loader = data.train_stream(config, Shard { rank, world }, &position)?;
        let mut window = Window::<B>::new(&device, start.model.sum_names());
        // The saved window holds the sums of all workers: rank 0 carries them on.
        if let Some(s) = st.as_ref().filter(|_| lead) {
            window.restore(&s.window);
        }
        let stop_at = options
            .until_step
            .map_or(total_steps, |u| u.min(total_steps));
        let mut lp = Loop {
            config,
            data,
            loader,
            device,
            world,
            unit: data.unit(),
            table,
            optim: start.optim,
            schedule,
            horizon,
            total_steps,
            stop_at,
            first_step: start.step,
            step: start.step,
            batches_per_epoch,
            micro_done,
            position,
            window,
            // f16 needs loss scaling (bf16 has f32's range); a resumed run continues its scaler.
            loss_scale: (t.precision == Precision::F16)
                .then(|| st.as_ref().and_then(|s| s.loss_scale).unwrap_or_default()),
            best: BestTracker::new(&config.checkpoint, st.as_ref().and_then(|s| s.best.clone())),
            last_valid: st.as_ref().and_then(|s| s.last_valid.clone()),
            data_wait_total: Duration::from_secs_f64(st.as_ref().map_or(0.0, |s| s.data_wait_secs)),
            eval_schedule: EvalSchedule::new(t.eval_every),
            checkpoints: CheckpointPolicy::new(config.checkpoint.every_steps, stop_at),
            // Each worker draws its own dropout masks; rank 0's are those of a single worker.
            dropout_seed: config.run.seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            sinks: Sinks::none(),
            saver: lead.then(|| Saver::new(&run_path, config)),
            run_path,
            comm,
        };
        if let Some(run) = start.run {
            let params = start.model.num_params();
            lp.open_sinks(run, backend, params, start.resume_event, options)?;
        }
        Ok((lp, start.model))
    }

    /// Rank 0's sinks: `metrics.jsonl`, the console and the caller's; each hears of the start
    /// (and the resume), and of the config as an artifact.
    fn open_sinks(
        &mut self,
        run: RunDir,
        backend: BackendKind,
        params: usize,
        resume: Option<ResumeEvent>,
        options: &TrainOptions,
    ) -> Result<()> {
        self.sinks.push(Box::new(Jsonl::new(run)));
        self.sinks.push(Box::new(Console::new(self.unit)));
        for sink in &options.sinks {
            self.sinks.push(Box::new(sink.clone()));
        }
        let (device, data) = (format!("{:?}", self.device), self.data.describe());
        self.sinks.start(&RunStart {
            config: self.config,
            run_dir: &self.run_path,
            resumed_from: (self.first_step > 0).then_some(self.first_step),
            total_steps: self.total_steps,
            backend: backend.name(),
            device: &device,
            workers: self.world,
            engine: self.comm.engine(),
            params,
            data: &data,
        })?;
        if let Some(resume) = resume {
            self.sinks.event(Event::Resume(resume))?;
        }
        let config = self.run_path.join("config.toml");
        self.sinks.artifact("config", &config)
    }

    /// Trains until the end or `until_step`, or until a signal stops every worker: each step
    /// trains, then the parts decide whether to log, evaluate, checkpoint or stop.
    fn steps<M>(&mut self, mut model: M, stop: &AtomicBool) -> Result<(M, Status)>
    where
        M: TrainModel<B, HostBatch = D::Batch> + AutodiffModule<B>,
        M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
    {
        while self.step < self.stop_at {
            self.step += 1;
            let (micro, n, total) = self.next_batches::<M>()?;
            let lr = self.schedule.next_lr();
            debug_assert!(
                lr.is_finite(),
                "the schedule gave lr {lr} at step {}",
                self.step
            );
            model = self.train(model, micro, n, total, lr)?;
            self.sinks.step(self.step);
            let last = self.step == self.total_steps;
            if self.step.is_multiple_of(self.config.train.log_every) || last {
                self.log_window(&model, lr)?;
            }
            let new_best = self.validate(&model, last)?;
            let stopping = stop_agreed(stop, &mut *self.comm)?;
            if stopping {
                self.sinks.message(&format!(
                    "stop requested (signal): saving a checkpoint at step {}, then exiting; signal again to exit at once",
                    self.step
                ));
            }
            if self.checkpoints.due(self.step, last, new_best) || stopping {
                self.checkpoint(&model, lr, new_best)?;
            }
            if let Some(written) = self.saver.as_mut().map(Saver::poll).transpose()?.flatten() {
                self.sinks.event(Event::Checkpoint(written))?;
            }
            if stopping {
                return Ok((model, Status::Interrupted));
            }
        }
        let paused = self.step < self.total_steps;
        Ok((
            model,
            if paused {
                Status::Paused
            } else {
                Status::Completed
            },
        ))
    }

    /// The step's micro-batches on the device (empty shards left out), their targets and the
    /// targets of the whole batch of all workers; advances the data position.
    fn next_batches<M: TrainModel<B, HostBatch = D::Batch>>(
        &mut self,
    ) -> Result<(Vec<M::Batch>, usize, usize)> {
        let accum = self.config.train.grad_accum_steps;
        let mut micro = Vec::with_capacity(accum);
        let (mut n, mut whole, mut resume) = (0, Some(0), None);
        for _ in 0..accum {
            let m = self.loader.next_batch()?;
            let targets = m.batch.targets();
            n += targets;
            whole = whole.zip(m.whole_targets).map(|(a, b)| a + b);
            resume = m.resume;
            self.micro_done += 1;
            if targets > 0 {
                micro.push(M::device_batch(m.batch, &self.device));
            }
        }
        let total = match whole {
            Some(whole) => whole,
            None if self.world == 1 => n,
            None => {
                let mut all = [n as f64];
                self.comm
                    .all_reduce_host(&mut all, "the all-reduce of the step's targets")?;
                all[0] as usize
            }
        };
        let samples_seen = self.position.samples_seen + total as u64;
        self.position = match (self.batches_per_epoch, resume) {
            (Some(bpe), _) => DataPosition {
                epoch: self.micro_done / bpe,
                batch_in_epoch: self.micro_done % bpe,
                batches_per_epoch: bpe,
                samples_seen,
                stream: None,
            },
            (None, resume) => DataPosition {
                epoch: resume.as_ref().map_or(0, |r| r.pass),
                batch_in_epoch: resume.as_ref().map_or(0, |r| r.batch),
                batches_per_epoch: 0,
                samples_seen,
                stream: resume,
            },
        };
        Ok((micro, n, total))
    }

    /// The epoch as a fraction (2.5: half-way through the third); for a stream source, the
    /// pass.
    fn epoch(&self) -> f64 {
        match self.batches_per_epoch {
            Some(bpe) => self.micro_done as f64 / bpe as f64,
            None => self.position.epoch as f64,
        }
    }

    /// One optimizer step on the micro-batches, timed into the log window.
    fn train<M: TrainModel<B> + AutodiffModule<B>>(
        &mut self,
        model: M,
        micro: Vec<M::Batch>,
        n: usize,
        total: usize,
        lr: f64,
    ) -> Result<M> {
        kiln_models::dropout::reseed(self.dropout_seed, self.step as u64);
        let parallel = self.world > 1;
        let started = Instant::now();
        let (model, stats) = train_step(
            model,
            &mut self.optim,
            micro,
            total,
            lr,
            self.config.train.grad_clip_norm,
            self.loss_scale.as_mut(),
            if parallel {
                Some(&mut *self.comm)
            } else {
                None
            },
        )?;
        self.window.step_secs += started.elapsed().as_secs_f64();
        self.window.add(stats, n);
        Ok(model)
    }

    /// Ends the log window: its event (in `metrics.jsonl`, on the progress line).
    fn log_window<M: TrainModel<B>>(&mut self, model: &M, lr: f64) -> Result<()> {
        let wait = self.loader.take_wait_time();
        self.data_wait_total += wait;
        let stats = self.window.take(model, wait, &mut *self.comm)?;
        let event = TrainEvent {
            step: self.step,
            epoch: self.epoch(),
            split: "train",
            loss: stats.loss,
            metrics: stats.metrics.into_iter().collect(),
            lr,
            samples_per_sec: stats.samples_per_sec,
            tokens_per_sec: (self.unit == "tokens").then_some(stats.samples_per_sec),
            data_wait_secs: stats.data_wait_secs,
            step_secs: stats.step_secs,
            window_secs: stats.window_secs,
            grad_norm: stats.grad_norm,
            loss_scale: self.loss_scale.map(|s| s.scale),
            skipped_steps: self.loss_scale.map(|s| s.skipped_steps),
            workers: (self.world > 1).then_some(self.world),
            comm_secs: (self.world > 1).then_some(stats.comm_secs),
        };
        self.sinks.event(Event::Train(event))
    }

    /// Evaluates on the validation split when due; whether the result is a new best.
    fn validate<M>(&mut self, model: &M, last: bool) -> Result<bool>
    where
        M: AutodiffModule<B>,
        M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
    {
        if !self.eval_schedule.due(self.step, last) {
            return Ok(false);
        }
        let started = Instant::now();
        let mut new_best = false;
        if self.data.has(Split::Valid) {
            let (config, data, device) = (self.config, self.data, &self.device);
            let r = evaluate_sharded(model, data, Split::Valid, config, device, &mut *self.comm)?;
            new_best = self.best.observe(self.step, &r)?;
            self.last_valid = Some(r.clone());
            let (step, epoch) = (self.step, self.epoch());
            let event = EvalEvent {
                step,
                epoch,
                split: "valid",
                result: r,
            };
            self.sinks.event(Event::Eval(event))?;
        }
        self.window.exclude(started);
        Ok(new_best)
    }

    /// Writes a checkpoint of the step (rank 0; every worker takes part in summing the window).
    fn checkpoint<M: Module<B>>(&mut self, model: &M, lr: f64, new_best: bool) -> Result<()> {
        let started = Instant::now();
        let window = self.window.state_of_all(&mut *self.comm)?;
        if let Some(saver) = self.saver.as_mut() {
            let (step, position) = (self.step, self.position.clone());
            let state = TrainState {
                rng: RngState {
                    seed: self.config.run.seed,
                    shuffle_stream: position.epoch,
                    dropout_next_step: step + 1,
                },
                data: position,
                schedule: ScheduleState {
                    horizon_steps: self.horizon,
                    steps_done: step,
                    last_lr: lr,
                },
                optimizer: OptimizerInfo {
                    kind: format!("{:?}", self.config.optimizer.kind).to_lowercase(),
                    buffers: self
                        .optim
                        .buffer_names()
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                },
                window,
                best: self.best.best().cloned(),
                last_valid: self.last_valid.clone(),
                data_wait_secs: self.data_wait_total.as_secs_f64(),
                loss_scale: self.loss_scale,
                workers: self.world,
            };
            let previous = saver.save(step, model, &self.optim, &self.table, state, new_best)?;
            if let Some(written) = previous {
                self.sinks.event(Event::Checkpoint(written))?;
            }
        }
        self.window.exclude(started);
        Ok(())
    }

    /// After the last step of this invocation: the test split (a completed run), the last
    /// checkpoint written, the end for the sinks and the summary.
    fn finish<M>(&mut self, model: &M, status: Status, started: Instant) -> Result<TrainSummary>
    where
        M: AutodiffModule<B>,
        M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
    {
        // The loader's threads stop before the test split is read.
        self.loader = Box::new(Closed);
        let (config, data, device) = (self.config, self.data, &self.device);
        let test = if status == Status::Completed && data.has(Split::Test) {
            let r = evaluate_sharded(model, data, Split::Test, config, device, &mut *self.comm)?;
            let p = &self.position;
            let epoch = match p.batches_per_epoch {
                0 => p.epoch as f64,
                bpe => p.epoch as f64 + p.batch_in_epoch as f64 / bpe as f64,
            };
            let (step, result) = (self.total_steps, r.clone());
            let event = EvalEvent {
                step,
                epoch,
                split: "test",
                result,
            };
            self.sinks.event(Event::Eval(event))?;
            Some(r)
        } else {
            None
        };
        let checkpoint = self.last_checkpoint()?;
        let summary = self.summary(status, checkpoint, started, test);
        self.sinks.end(&run_end(status, &summary, None))?;
        Ok(summary)
    }

    /// Waits for the checkpoint being written; the newest one written.
    fn last_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(saver) = self.saver.as_mut() else {
            return Ok(None);
        };
        let (written, last) = saver.finish()?;
        if let Some(written) = written {
            self.sinks.event(Event::Checkpoint(written))?;
        }
        Ok(last)
    }

    /// After an error: the checkpoint in flight is finished (nothing saved is lost), and the
    /// sinks hear that the run failed.
    fn fail(&mut self, error: &anyhow::Error, started: Instant) {
        let checkpoint = self.last_checkpoint().ok().flatten();
        let summary = self.summary(Status::Failed, checkpoint, started, None);
        let message = format!("{error:#}");
        if let Err(e) = self
            .sinks
            .end(&run_end(Status::Failed, &summary, Some(&message)))
        {
            tracing::warn!("a sink failed at the end of the failed run: {e:#}");
        }
    }

    fn summary(
        &self,
        status: Status,
        checkpoint: Option<PathBuf>,
        started: Instant,
        test: Option<EvalResult>,
    ) -> TrainSummary {
        TrainSummary {
            status: status.name(),
            run_dir: self.run_path.clone(),
            steps: self.step,
            total_steps: self.total_steps,
            resumed_from: (self.first_step > 0).then_some(self.first_step),
            checkpoint,
            seconds: started.elapsed().as_secs_f64(),
            data_wait_seconds: self.data_wait_total.as_secs_f64(),
            workers: self.world,
            engine: self.comm.engine(),
            valid: self.last_valid.clone(),
            test,
        }
    }
}

/// What the sinks hear at the end of a run with summary `s`.
fn run_end<'s>(status: Status, s: &'s TrainSummary, error: Option<&'s str>) -> RunEnd<'s> {
    RunEnd {
        status,
        step: s.steps,
        total_steps: s.total_steps,
        run_dir: &s.run_dir,
        checkpoint: s.checkpoint.as_deref(),
        seconds: s.seconds,
        data_wait_seconds: s.data_wait_seconds,
        test: s.test.as_ref(),
        error,
    }
}

/// The training stream after the loop: its threads are stopped.
struct Closed;

impl<T> TrainStream<T> for Closed {
    fn next_batch(&mut self) -> Result<crate::data::Micro<T>> {
        bail!("the training stream is closed")
    }
}

/// Rank 0's run directory, fresh or resumed (the checkpoint loaded into the model and a new
/// optimizer), checked against the other workers and logged.
#[allow(clippy::too_many_arguments)]
fn open_run<B: AutodiffBackend, M: TrainModel<B> + AutodiffModule<B>>(
    config: &Config,
    model: M,
    table: &ParamTable,
    data: &(impl TrainData + ?Sized),
    device: &B::Device,
    backend: BackendKind,
    options: &TrainOptions,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<(Start<B, M>, PathBuf)> {
    let (lead, world) = (comm.rank() == 0, comm.world());
    let optim = Optim::<B>::new(&config.optimizer).without_decay(model.no_decay());
    let start = match &options.resume {
        None => Start {
            run: {
                let devices = worker_devices(comm, device)?;
                lead.then(|| create_run_dir(config, data, backend, devices))
                    .transpose()?
            },
            model,
            optim,
            step: 0,
            state: None,
            resume_event: None,
        },
        Some(from) => resume(config, options, from, table, model, optim, device, lead)?,
    };
    agree(comm, config, data, start.step)?;
    check_workers(config, start.state.as_ref(), world, options.force)?;
    let run_path = options.resume.as_ref().map_or_else(
        || config.run.output_dir.join(&config.run.name),
        |r| r.run_dir().to_path_buf(),
    );
    Ok((start, run_path))
}

/// Each worker's host and device, in rank order (every worker calls it: a collective).
fn worker_devices<B: burn::tensor::backend::Backend>(
    comm: &mut dyn Communicator<B>,
    device: &B::Device,
) -> Result<Vec<WorkerDevice>> {
    let mine = format!("{}\n{device:?}", host_name());
    let all = kiln_dist::all_gather_text(comm, &mine, "the workers' device names")?;
    Ok(all
        .into_iter()
        .enumerate()
        .map(|(rank, text)| {
            let (host, device) = text.split_once('\n').unwrap_or(("", &text));
            WorkerDevice {
                rank,
                host: host.to_string(),
                device: device.to_string(),
            }
        })
        .collect())
}

/// Creates rank 0's run directory for a fresh run, with the data's artifacts (the tokenizer).
fn create_run_dir(
    config: &Config,
    data: &(impl TrainData + ?Sized),
    backend: BackendKind,
    devices: Vec<WorkerDevice>,
) -> Result<RunDir> {
    let info = RunInfo::new(backend.name(), devices, config.run.seed);
    let run = RunDir::create(config, &info)?;
    data.save_artifacts(run.path())?;
    Ok(run)
}

/// Refuses a checkpoint written by another number of workers unless `force`d: the effective
/// batch would change.
fn check_workers(
    config: &Config,
    state: Option<&TrainState>,
    world: usize,
    force: bool,
) -> Result<()> {
    let saved_workers = state.map_or(world, |s| s.workers);
    if saved_workers != world {
        let b = config.data.batch_size * config.train.grad_accum_steps;
        if !force {
            bail!(
                "the checkpoint was written by {saved_workers} data-parallel workers (effective batch {}), and this run has {world} (effective batch {}); resume with {saved_workers} workers, or pass --force to continue with the new effective batch from the same point of the epoch",
                b * saved_workers,
                b * world
            );
        }
        tracing::warn!(
            "resuming a {saved_workers}-worker checkpoint on {world} workers (--force): the effective batch changes from {} to {}",
            b * saved_workers,
            b * world
        );
    }
    Ok(())
}

/// The run's last step: `train.max_steps`, or `train.epochs` of the data's batches.
fn run_length(config: &Config, batches_per_epoch: Option<usize>) -> Result<usize> {
    let t = &config.train;
    Ok(match (t.max_steps, batches_per_epoch) {
        (Some(steps), _) => steps,
        (None, Some(bpe)) => (t.epochs.unwrap_or(1) * bpe).div_ceil(t.grad_accum_steps),
        (None, None) => bail!(
            "train.epochs: the training data is a stream, whose length is unknown; set train.max_steps instead"
        ),
    })
}

/// Where the data stream continues: a fresh run's start, or the checkpoint's position (for
/// another number of workers, `--force`, the same fraction of the epoch, rounded down to whole
/// batches of the new size; a stream continues from its own position).
fn resume_position(state: Option<&TrainState>, batches_per_epoch: Option<usize>) -> DataPosition {
    let Some(batches_per_epoch) = batches_per_epoch else {
        return state.map_or_else(DataPosition::default, |s| s.data.clone());
    };
    let mut position = state.map_or(
        DataPosition {
            batches_per_epoch,
            ..Default::default()
        },
        |s| s.data.clone(),
    );
    if position.batches_per_epoch != batches_per_epoch {
        position.batch_in_epoch =
            position.batch_in_epoch * batches_per_epoch / position.batches_per_epoch.max(1);
        position.batches_per_epoch = batches_per_epoch;
    }
    position
}

/// The learning-rate schedule over `horizon` steps, advanced to `step`; unless `force`d, its
/// rate at `step` must be the one the checkpoint recorded.
fn schedule_at(
    config: &Config,
    horizon: usize,
    step: usize,
    state: Option<&TrainState>,
    force: bool,
) -> Result<LrSchedule> {
    let mut schedule = LrSchedule::new(&config.schedule, config.optimizer.lr, horizon)?;
    let mut lr = 0.0;
    for _ in 0..step {
        lr = schedule.next_lr();
    }
    if let Some(s) = state.filter(|_| !force) {
        if lr != s.schedule.last_lr {
            bail!(
                "the learning-rate schedule of the config gives {lr} at step {step}, but the checkpoint recorded {}; the schedule settings changed (pass --force to accept)",
                s.schedule.last_lr
            );
        }
    }
    Ok(schedule)
}

/// Checks that every worker runs the same maths on the same data from the same step.
fn agree<B: burn::tensor::backend::Backend>(
    comm: &mut dyn Communicator<B>,
    config: &Config,
    data: &(impl TrainData + ?Sized),
    step: usize,
) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut h = DefaultHasher::new();
    (config.maths_hash(), data.describe(), step).hash(&mut h);
    let mine = h.finish();
    let all = comm.all_gather_u64(mine, "the config check of all workers")?;
    let differ: Vec<usize> = (0..all.len()).filter(|&r| all[r] != all[0]).collect();
    if !differ.is_empty() {
        bail!(
            "the workers disagree on the run: rank(s) {differ:?} have a different config, data or resume step than rank 0 (fingerprints {:016x} vs {:016x}); every worker must run the same config on the same data (a shared filesystem for --resume)",
            all[differ[0]],
            all[0]
        );
    }
    Ok(())
}

/// Evaluates `split` with each worker taking every `world`-th batch; the sums are combined.
fn evaluate_sharded<B, D, M>(
    model: &M,
    data: &D,
    split: Split,
    config: &Config,
    device: &B::Device,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<EvalResult>
where
    B: AutodiffBackend,
    D: TrainData + ?Sized,
    M: AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
{
    let (rank, world) = (comm.rank(), comm.world());
    let batches = data
        .eval_batches(split, config)
        .enumerate()
        .filter(move |(i, _)| i % world == rank)
        .map(|(_, b)| b);
    let model = model.valid();
    let mut sums = eval_sums(&model, batches, device)?;
    if world > 1 {
        let mut all = vec![sums.loss_sum, sums.targets as f64];
        all.extend(&sums.sums);
        comm.all_reduce_host(&mut all, "the evaluation all-reduce")?;
        sums = EvalSums {
            loss_sum: all[0],
            targets: all[1] as usize,
            sums: all[2..].to_vec(),
        };
    }
    Ok(sums.finish(&model))
}

/// Opens the run directory, finds and verifies the checkpoint, and loads it. Only the `lead`
/// worker (rank 0) changes anything on disk or logs.
#[allow(clippy::too_many_arguments)]
fn resume<B: AutodiffBackend, M: Module<B>>(
    config: &Config,
    options: &TrainOptions,
    from: &ResumeFrom,
    table: &ParamTable,
    model: M,
    mut optim: Optim<B>,
    device: &B::Device,
    lead: bool,
) -> Result<Start<B, M>> {
    let run_path = from.run_dir();
    let mut run = RunDir::open(run_path)?;
    if lead {
        for p in remove_partial(run_path) {
            tracing::warn!(
                "removed {}: a checkpoint write that never finished",
                p.display()
            );
        }
    }
    let hash = config.maths_hash();
    let hash = (!options.force).then_some(hash.as_str());
    let fits = |v: &Verified| check_fits(v, table, &optim);
    let (verified, skipped) = match from {
        ResumeFrom::Latest(dir) => {
            let (v, skipped) = find_resumable(dir, hash, fits)?;
            if lead {
                for s in &skipped {
                    tracing::warn!("skipped checkpoint step-{}: {}", s.step, s.error);
                }
            }
            let skipped = skipped.into_iter().map(|s| Skipped {
                step: s.step,
                reason: s.error.to_string(),
            });
            (v, Some(skipped.collect()))
        }
        ResumeFrom::Checkpoint(dir) => (verify(dir, hash).and_then(|v| fits(&v).map(|_| v))?, None),
    };
    let resume_event = ResumeEvent {
        step: verified.step,
        event: "resume",
        checkpoint: verified.dir.clone(),
        skipped,
    };
    let state = train_state(&verified)?;
    let model = restore(&verified, table, model, &mut optim, device);
    if lead {
        let dropped = run.truncate_metrics(verified.step)?;
        if dropped > 0 {
            tracing::info!(
                "dropped {dropped} metrics events after step {} (the resumed run recomputes them)",
                verified.step
            );
        }
        run.write_config(config)
            .context("cannot record the resumed run's config")?;
        tracing::info!(
            "resuming from {} at step {} (epoch {}, batch {} of {})",
            verified.dir.display(),
            verified.step,
            state.data.epoch,
            state.data.batch_in_epoch,
            state.data.batches_per_epoch
        );
    }
    Ok(Start {
        run: lead.then_some(run),
        model,
        optim,
        step: verified.step,
        state: Some(state),
        resume_event: Some(resume_event),
    })
}

/// Training statistics of the steps since the last log event, accumulated on the device so that
/// logging is the only synchronization.
struct Window<B: AutodiffBackend> {
    device: B::Device,
    /// The model's sum names, in the order of its sums.
    names: Vec<String>,
    loss_sum: Tensor<B::InnerBackend, 1>,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
    samples: usize,
    since: Instant,
    /// Evaluation and checkpoint time since `since`, left out of the window's duration.
    excluded: Duration,
    grad_norm: Option<f64>,
    comm_secs: f64,
    /// Seconds inside `train_step` during the window (the rest is the loop's own time).
    step_secs: f64,
}

struct WindowStats {
    loss: f64,
    /// The model's metrics over the window ([`TrainModel::metrics`]).
    metrics: Vec<(String, f64)>,
    samples_per_sec: f64,
    grad_norm: Option<f64>,
    /// This worker's seconds in gradient all-reduces during the window.
    comm_secs: f64,
    /// This worker's seconds inside `train_step` during the window.
    step_secs: f64,
    /// The window's seconds of training (evaluation and checkpoints excluded).
    window_secs: f64,
    /// Seconds the loop waited for the data loader during the window.
    data_wait_secs: f64,
}

impl<B: AutodiffBackend> Window<B> {
    fn new(device: &B::Device, names: Vec<String>) -> Self {
        Self {
            device: device.clone(),
            loss_sum: Tensor::zeros([1], device),
            sums: vec![Tensor::zeros([1], device); names.len()],
            names,
            samples: 0,
            since: Instant::now(),
            excluded: Duration::ZERO,
            grad_norm: None,
            comm_secs: 0.0,
            step_secs: 0.0,
        }
    }

    fn add(&mut self, stats: StepStats<B>, n: usize) {
        self.loss_sum = self.loss_sum.clone() + stats.loss_sum;
        for (total, s) in self.sums.iter_mut().zip(stats.sums) {
            *total = total.clone() + s;
        }
        self.samples += n;
        self.grad_norm = stats.grad_norm.or(self.grad_norm);
        self.comm_secs += stats.comm_secs;
    }

    /// The accumulators, exactly, for a checkpoint.
    fn state(&self) -> WindowState {
        WindowState {
            loss_sum: self.loss_sum.clone().into_scalar().elem::<f32>(),
            sums: self
                .names
                .iter()
                .zip(&self.sums)
                .map(|(n, s)| (n.clone(), s.clone().into_scalar().elem::<f64>()))
                .collect(),
            correct: None,
            samples: self.samples,
            grad_norm: self.grad_norm,
        }
    }

    fn restore(&mut self, s: &WindowState) {
        self.loss_sum = Tensor::from_floats([s.loss_sum], &self.device);
        self.sums = self
            .names
            .iter()
            .map(|n| Tensor::from_floats([s.sum(n) as f32], &self.device))
            .collect();
        self.samples = s.samples;
        self.grad_norm = s.grad_norm;
    }

    /// Evaluation and checkpoint time does not count against training throughput: the time
    /// since `started` is left out of the window.
    fn exclude(&mut self, started: Instant) {
        self.excluded += started.elapsed();
    }

    /// The accumulators summed over all workers, for rank 0's checkpoint.
    fn state_of_all(&self, comm: &mut dyn Communicator<B::InnerBackend>) -> Result<WindowState> {
        let mut s = self.state();
        if comm.world() > 1 {
            let mut all = vec![f64::from(s.loss_sum), s.samples as f64];
            all.extend(s.sums.values());
            comm.all_reduce_host(&mut all, "the metrics all-reduce")?;
            s.loss_sum = all[0] as f32;
            s.samples = all[1] as usize;
            for (v, total) in s.sums.values_mut().zip(&all[2..]) {
                *v = *total;
            }
        }
        Ok(s)
    }

    /// The statistics of the window over all workers; starts a new window.
    fn take<M: TrainModel<B>>(
        &mut self,
        model: &M,
        data_wait: Duration,
        comm: &mut dyn Communicator<B::InnerBackend>,
    ) -> Result<WindowStats> {
        let fresh = Window::<B>::new(&self.device, self.names.clone());
        let old = std::mem::replace(self, fresh);
        let secs = (old.since.elapsed().saturating_sub(old.excluded))
            .as_secs_f64()
            .max(1e-9);
        let mut all = vec![old.loss_sum.into_scalar().elem::<f64>(), old.samples as f64];
        all.extend(old.sums.into_iter().map(|s| s.into_scalar().elem::<f64>()));
        if comm.world() > 1 {
            comm.all_reduce_host(&mut all, "the metrics all-reduce")?;
        }
        let n = all[1].max(1.0);
        Ok(WindowStats {
            loss: all[0] / n,
            metrics: model.metrics(&all[2..], all[1]),
            samples_per_sec: n / secs,
            grad_norm: old.grad_norm,
            comm_secs: old.comm_secs,
            step_secs: old.step_secs,
            window_secs: secs,
            data_wait_secs: data_wait.as_secs_f64(),
        })
    }
}
