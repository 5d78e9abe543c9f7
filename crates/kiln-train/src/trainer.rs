//! Kiln's step-based training loop, generic over the autodiff backend: fresh or resumed from a
//! checkpoint, checkpointing in the background, stopping cleanly on a signal.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use kiln_checkpoint::{find_resumable, remove_partial, verify, Verified};
use kiln_core::config::Precision;
use kiln_core::rundir::RunInfo;
use kiln_core::{BackendKind, Config, RunDir};
use kiln_data::Shard;
use kiln_dist::Communicator;
use kiln_models::{HostBatch, Model, Targets, TrainModel};
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::{
    check_fits, restore, train_state, DataPosition, OptimizerInfo, ParamTable, RngState,
    ScheduleState, TrainState, WindowState,
};
use crate::data::{RunData, Split};
use crate::eval::{eval_sums, EvalResult, EvalSums};
use crate::optim::Optim;
use crate::parts::{stop_agreed, BestTracker, CheckpointPolicy, EvalSchedule};
use crate::progress::Progress;
use crate::saver::Saver;
use crate::schedule::LrSchedule;
use crate::step::{train_step, StepStats};

/// Where a resumed run continues from.
#[derive(Clone, Debug)]
pub enum ResumeFrom {
    /// The newest checkpoint of a run directory that verifies.
    Latest(PathBuf),
    /// One checkpoint directory (`<run>/step-<N>`).
    Checkpoint(PathBuf),
}

impl ResumeFrom {
    pub fn run_dir(&self) -> &Path {
        match self {
            ResumeFrom::Latest(run) => run,
            ResumeFrom::Checkpoint(dir) => dir.parent().unwrap_or(Path::new(".")),
        }
    }
}

/// How a run is started and stopped, besides its config.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    pub resume: Option<ResumeFrom>,
    /// Resume even though the checkpoint was written under a different config.
    pub force: bool,
    /// Set (by SIGINT/SIGTERM) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Stop after this step with a checkpoint, as if preempted (for time-sliced job queues).
    pub until_step: Option<usize>,
}

/// What a run reports when it returns.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// "completed", "interrupted" (by a signal) or "paused" (`--until-step`).
    pub status: &'static str,
    pub run_dir: PathBuf,
    pub steps: usize,
    pub total_steps: usize,
    pub resumed_from: Option<usize>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    pub seconds: f64,
    pub data_wait_seconds: f64,
    /// Data-parallel workers (1 alone) and how they exchanged gradients.
    pub workers: usize,
    pub engine: &'static str,
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
    train_with(config, &builtin_model::<B>, device, backend, options, comm)
}

/// The built-in model of `config`'s `[model]` section for `data`: what [`train`] trains.
pub fn builtin_model<B: AutodiffBackend>(
    config: &Config,
    data: &RunData,
    device: &B::Device,
) -> Result<Model<B>> {
    Model::<B>::new(
        &config.model,
        &data.shape(),
        config.train.precision,
        config.run.seed,
        device,
    )
}

/// [`train`] with a model of the caller's, built by `build` from the run's config and data on
/// the worker's device: any [`TrainModel`] that takes Kiln's host batches, with all of the loop
/// (checkpoints, exact resume, signals, `until_step`, accumulation, clipping, schedules, data
/// parallelism, evaluation, the best checkpoint, f16 loss scaling). On resume the built model's
/// weights are replaced by the checkpoint's.
pub fn train_with<B, M, F>(
    config: &Config,
    build: &F,
    device: B::Device,
    backend: BackendKind,
    options: TrainOptions,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<TrainSummary>
where
    B: AutodiffBackend,
    M: TrainModel<B, HostBatch = HostBatch> + AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = HostBatch>,
    F: Fn(&Config, &RunData, &B::Device) -> Result<M> + ?Sized,
{
    kiln_core::backend::check_precision(backend, config.train.precision)?;
    let data = RunData::load(config)?;
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
        let model = build(config, &data, &device)?;
        kiln_models::materialize(&model);
        model
    };
    train_loop(config, model, &data, device, backend, options, comm)
}

/// The loop itself, from a built model.
fn train_loop<B, M>(
    config: &Config,
    model: M,
    data: &RunData,
    device: B::Device,
    backend: BackendKind,
    options: TrainOptions,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<TrainSummary>
where
    B: AutodiffBackend,
    M: TrainModel<B, HostBatch = HostBatch> + AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = HostBatch>,
{
    let started = Instant::now();
    let seed = config.run.seed;
    let (rank, world) = (comm.rank(), comm.world());
    let lead = rank == 0;
    let shard = Shard { rank, world };
    let optim = Optim::<B>::new(&config.optimizer).without_decay(model.no_decay());
    let table = ParamTable::of(&model);
    let mut start = match &options.resume {
        None => {
            let run = if lead {
                let info = RunInfo::new(backend.name(), &format!("{device:?}"), seed);
                let run = RunDir::create(config, &info)?;
                data.save_artifacts(run.path())?;
                Some(run)
            } else {
                None
            };
            Start {
                run,
                model,
                optim,
                step: 0,
                state: None,
            }
        }
        Some(from) => resume(config, &options, from, &table, model, optim, &device, lead)?,
    };
    agree(comm, config, data, start.step)?;
    let saved_workers = start.state.as_ref().map_or(world, |s| s.workers);
    if saved_workers != world {
        let b = config.data.batch_size * config.train.grad_accum_steps;
        if !options.force {
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
    let run_path = options.resume.as_ref().map_or_else(
        || config.run.output_dir.join(&config.run.name),
        |r| r.run_dir().to_path_buf(),
    );
    if lead {
        tracing::info!(
            "run {} on {backend} ({device:?}, {}): {}; model: {} parameters{}",
            run_path.display(),
            config.train.precision.name(),
            data.describe(),
            start.model.num_params(),
            if world > 1 {
                format!(
                    "; {world} workers ({}), effective batch {} = {} per worker x {world}{}",
                    comm.engine(),
                    config.data.batch_size * world * config.train.grad_accum_steps,
                    config.data.batch_size,
                    if config.train.grad_accum_steps > 1 {
                        format!(" x {} accumulation steps", config.train.grad_accum_steps)
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            }
        );
    }

    let d = &config.data;
    let batches_per_epoch = data.batches_per_epoch(d.batch_size * world);
    let t = &config.train;
    let accum = t.grad_accum_steps;
    let total_steps = t
        .max_steps
        .unwrap_or_else(|| (t.epochs.unwrap_or(1) * batches_per_epoch).div_ceil(accum));
    let unit = match data {
        RunData::Samples(_) => "samples",
        RunData::Text(_) => "tokens",
    };
    let st = start.state.take();
    let mut position = st.as_ref().map_or(
        DataPosition {
            epoch: 0,
            batch_in_epoch: 0,
            batches_per_epoch,
            samples_seen: 0,
        },
        |s| s.data,
    );
    if position.batches_per_epoch != batches_per_epoch {
        // A different number of workers (--force): the same fraction of the epoch, rounded down
        // to whole batches of the new size.
        position.batch_in_epoch =
            position.batch_in_epoch * batches_per_epoch / position.batches_per_epoch.max(1);
        position.batches_per_epoch = batches_per_epoch;
    }
    let horizon = st
        .as_ref()
        .map_or(total_steps, |s| s.schedule.horizon_steps);
    if horizon != total_steps && lead {
        tracing::info!(
            "the run now ends at step {total_steps}; its learning-rate schedule keeps the horizon of {horizon} steps it started with"
        );
    }
    let mut schedule = LrSchedule::new(&config.schedule, config.optimizer.lr, horizon)?;
    let mut lr = 0.0;
    for _ in 0..start.step {
        lr = schedule.next_lr();
    }
    if let Some(s) = st.as_ref().filter(|_| !options.force) {
        if lr != s.schedule.last_lr {
            bail!(
                "the learning-rate schedule of the config gives {lr} at step {}, but the checkpoint recorded {}; the schedule settings changed (pass --force to accept)",
                start.step,
                s.schedule.last_lr
            );
        }
    }

    let mut micro_done = position.epoch * position.batches_per_epoch + position.batch_in_epoch;
    let mut loader = data.train_stream(config, micro_done, shard);
    let mut window = Window::<B>::new(&device, start.model.sum_names());
    // The saved window holds the sums of all workers: rank 0 carries them on.
    if let Some(s) = st.as_ref().filter(|_| lead) {
        window.restore(&s.window);
    }
    // f16 needs loss scaling (bf16 has f32's range); a resumed run continues its scaler.
    let mut loss_scale = (t.precision == Precision::F16)
        .then(|| st.as_ref().and_then(|s| s.loss_scale).unwrap_or_default());
    let mut best = BestTracker::new(&config.checkpoint, st.as_ref().and_then(|s| s.best.clone()));
    let mut last_valid = st.as_ref().and_then(|s| s.last_valid.clone());
    let mut data_wait_total =
        Duration::from_secs_f64(st.as_ref().map_or(0.0, |s| s.data_wait_secs));
    let mut saver = lead.then(|| Saver::new(&run_path, config));
    let mut run = start.run;
    let mut model = start.model;
    let mut optim = start.optim;
    let first_step = start.step;
    let stop_at = options
        .until_step
        .map_or(total_steps, |u| u.min(total_steps));
    let eval_schedule = EvalSchedule::new(t.eval_every);
    let checkpoints = CheckpointPolicy::new(config.checkpoint.every_steps, stop_at);
    let progress = if lead {
        Progress::new(total_steps, first_step)
    } else {
        Progress::quiet()
    };
    // Each worker draws its own dropout masks; rank 0's are those of a single-worker run.
    let dropout_seed = seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);

    let mut step = first_step;
    let mut status = "completed";
    while step < stop_at {
        step += 1;
        let mut micro = Vec::with_capacity(accum);
        let (mut n, mut whole) = (0, 0);
        for _ in 0..accum {
            let batch = loader.next_batch();
            n += batch.targets();
            whole += batch.whole;
            micro_done += 1;
            if batch.targets() > 0 {
                micro.push(M::device_batch(batch, &device));
            }
        }
        position = DataPosition {
            epoch: micro_done / batches_per_epoch,
            batch_in_epoch: micro_done % batches_per_epoch,
            batches_per_epoch,
            samples_seen: position.samples_seen + whole as u64,
        };
        let epoch = micro_done as f64 / batches_per_epoch as f64;

        kiln_models::dropout::reseed(dropout_seed, step as u64);
        lr = schedule.next_lr();
        debug_assert!(lr.is_finite(), "the schedule gave lr {lr} at step {step}");
        let parallel = world > 1;
        let step_started = Instant::now();
        let (next, stats) = train_step(
            model,
            &mut optim,
            micro,
            if parallel { whole } else { n },
            lr,
            t.grad_clip_norm,
            loss_scale.as_mut(),
            if parallel { Some(&mut *comm) } else { None },
        )?;
        model = next;
        window.step_secs += step_started.elapsed().as_secs_f64();
        window.add(stats, n);

        let last = step == total_steps;
        let summary = if step % t.log_every == 0 || last {
            let wait = loader.take_wait_time();
            data_wait_total += wait;
            let stats = window.take(&model, comm)?;
            let mut event = json!({
                "step": step, "epoch": epoch, "split": "train",
                "loss": stats.loss, "lr": lr,
                "samples_per_sec": stats.samples_per_sec,
                "data_wait_secs": wait.as_secs_f64(),
                "step_secs": stats.step_secs, "window_secs": stats.window_secs,
            });
            for (name, value) in &stats.metrics {
                event[name.as_str()] = json!(value);
            }
            if let Some(g) = stats.grad_norm {
                event["grad_norm"] = json!(g);
            }
            if unit == "tokens" {
                event["tokens_per_sec"] = json!(stats.samples_per_sec);
            }
            if let Some(s) = &loss_scale {
                event["loss_scale"] = json!(s.scale);
                event["skipped_steps"] = json!(s.skipped_steps);
            }
            if world > 1 {
                event["workers"] = json!(world);
                event["comm_secs"] = json!(stats.comm_secs);
            }
            if let Some(run) = run.as_mut() {
                run.log_event(&event)?;
            }
            let metrics: String = stats
                .metrics
                .iter()
                .map(|(name, v)| format!(" {} {v:.3}", short_name(name)))
                .collect();
            Some(format!(
                "loss {:.4}{metrics} lr {lr:.2e} {:.0} {unit}/s",
                stats.loss, stats.samples_per_sec
            ))
        } else {
            None
        };
        progress.step(step, summary.as_deref());

        let mut new_best = false;
        if eval_schedule.due(step, last) {
            let eval_started = Instant::now();
            if data.has(Split::Valid) {
                let r = evaluate_sharded(&model, data, Split::Valid, config, &device, comm)?;
                if let Some(run) = run.as_mut() {
                    run.log_event(&eval_event(step, epoch, "valid", &r))?;
                }
                progress.message(&format!("step {step}: valid {}", describe(&r)));
                new_best = best.observe(step, &r)?;
                last_valid = Some(r);
            }
            window.exclude(eval_started);
        }

        let stopping = stop_agreed(&options.stop, comm)?;
        if stopping {
            progress.message(&format!(
                "stop requested (signal): saving a checkpoint at step {step}, then exiting; signal again to exit at once"
            ));
        }
        if checkpoints.due(step, last, new_best) || stopping {
            let save_started = Instant::now();
            let window_state = window.state_of_all(comm)?;
            if let (Some(saver), Some(run)) = (saver.as_mut(), run.as_mut()) {
                let state = TrainState {
                    data: position,
                    rng: RngState {
                        seed,
                        shuffle_stream: position.epoch,
                        dropout_next_step: step + 1,
                    },
                    schedule: ScheduleState {
                        horizon_steps: horizon,
                        steps_done: step,
                        last_lr: lr,
                    },
                    optimizer: OptimizerInfo {
                        kind: format!("{:?}", config.optimizer.kind).to_lowercase(),
                        buffers: optim.buffer_names().iter().map(|s| s.to_string()).collect(),
                    },
                    window: window_state,
                    best: best.best().cloned(),
                    last_valid: last_valid.clone(),
                    data_wait_secs: data_wait_total.as_secs_f64(),
                    loss_scale,
                    workers: world,
                };
                saver.save(step, &model, &optim, &table, state, new_best, run)?;
            }
            window.exclude(save_started);
        }
        if let (Some(saver), Some(run)) = (saver.as_mut(), run.as_mut()) {
            saver.poll(run)?;
        }
        if stopping {
            status = "interrupted";
            break;
        }
    }
    progress.finish();
    drop(loader);
    if status == "completed" && step < total_steps {
        status = "paused";
    }

    let test = if status == "completed" && data.has(Split::Test) {
        let r = evaluate_sharded(&model, data, Split::Test, config, &device, comm)?;
        let epoch = position.epoch as f64
            + position.batch_in_epoch as f64 / position.batches_per_epoch as f64;
        if let Some(run) = run.as_mut() {
            run.log_event(&eval_event(total_steps, epoch, "test", &r))?;
        }
        Some(r)
    } else {
        None
    };
    let checkpoint = match (saver.as_mut(), run.as_mut()) {
        (Some(saver), Some(run)) => saver.finish(run)?,
        _ => None,
    };
    let seconds = started.elapsed().as_secs_f64();
    let where_ = checkpoint
        .as_ref()
        .map_or("no checkpoint".to_string(), |c| c.display().to_string());
    match (status, &test, lead) {
        (_, _, false) => {}
        ("completed", None, _) => tracing::info!(
            "done in {seconds:.1} s; weights in {where_}"
        ),
        ("completed", Some(test), _) => tracing::info!(
            "done in {seconds:.1} s: test {}; waited {:.2} s for data in total; weights in {where_}",
            describe(test),
            data_wait_total.as_secs_f64(),
        ),
        _ => tracing::warn!(
            "{status} at step {step} of {total_steps}; saved {where_}; continue with: kiln train --resume {}",
            run_path.display()
        ),
    }
    Ok(TrainSummary {
        status,
        run_dir: run_path,
        steps: step,
        total_steps,
        resumed_from: (first_step > 0).then_some(first_step),
        checkpoint,
        seconds,
        data_wait_seconds: data_wait_total.as_secs_f64(),
        workers: world,
        engine: comm.engine(),
        valid: last_valid,
        test,
    })
}

/// Checks that every worker runs the same maths on the same data from the same step.
fn agree<B: burn::tensor::backend::Backend>(
    comm: &mut dyn Communicator<B>,
    config: &Config,
    data: &RunData,
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
fn evaluate_sharded<B, M>(
    model: &M,
    data: &RunData,
    split: Split,
    config: &Config,
    device: &B::Device,
    comm: &mut dyn Communicator<B::InnerBackend>,
) -> Result<EvalResult>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = HostBatch>,
{
    let (rank, world) = (comm.rank(), comm.world());
    let batches = data
        .eval_batches(split, config)
        .enumerate()
        .filter(move |(i, _)| i % world == rank)
        .map(|(_, b)| b);
    let model = model.valid();
    let mut sums = eval_sums(&model, batches, device);
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
    let verified = match from {
        ResumeFrom::Latest(dir) => {
            let (v, skipped) = find_resumable(dir, hash, fits)?;
            if lead {
                for s in &skipped {
                    tracing::warn!("skipped checkpoint step-{}: {}", s.step, s.reason);
                }
                run.log_event(&json!({
                    "step": v.step, "event": "resume", "checkpoint": v.dir,
                    "skipped": skipped.iter().map(|s| json!({"step": s.step, "reason": s.reason})).collect::<Vec<_>>(),
                }))?;
            }
            v
        }
        ResumeFrom::Checkpoint(dir) => {
            let v = verify(dir, hash).and_then(|v| fits(&v).map(|_| v))?;
            if lead {
                run.log_event(&json!({"step": v.step, "event": "resume", "checkpoint": v.dir}))?;
            }
            v
        }
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
    })
}

fn eval_event(step: usize, epoch: f64, split: &str, r: &EvalResult) -> serde_json::Value {
    r.json_with(json!({"step": step, "epoch": epoch, "split": split}))
}

/// `loss 0.1234 accuracy 0.9000`: an evaluation for the log.
fn describe(r: &EvalResult) -> String {
    let metrics: String = r
        .metrics
        .iter()
        .map(|(name, v)| format!(" {name} {v:.4}"))
        .collect();
    format!("loss {:.4}{metrics}", r.loss)
}

/// A metric's name on the progress line (`acc` for the accuracy).
fn short_name(name: &str) -> &str {
    match name {
        "accuracy" => "acc",
        other => other,
    }
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
        })
    }
}
