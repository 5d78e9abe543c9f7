//! Opening a run: the run directory (fresh, or resumed from a verified checkpoint), the model,
//! optimizer and schedule where the run continues, and the checks that every worker agrees.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use kiln_checkpoint::{find_resumable, remove_partial, verify, Verified};
use kiln_core::config::Precision;
use kiln_core::device_memory::device_memory_probe;
use kiln_core::rundir::{host_name, RunInfo, WorkerDevice};
use kiln_core::{BackendKind, Config, RunDir};
use kiln_data::Shard;
use kiln_dist::Communicator;
use kiln_models::TrainModel;

use crate::checkpoint::{check_fits, restore, train_state, DataPosition, ParamTable, TrainState};
use crate::data::TrainData;
use crate::events::{Event, ResumeEvent, RunStart, Sinks, Skipped};
use crate::optim::Optim;
use crate::parts::{BestTracker, CheckpointPolicy, EvalSchedule};
use crate::resume::ResumeFrom;
use crate::saver::Saver;
use crate::schedule::LrSchedule;
use crate::sinks::{Console, Jsonl};
use crate::system::SystemSampler;
use crate::tracked::Tracked;
use kiln_infer::base::{check_base, BaseRef};

use super::window::Window;
use super::{Loop, Start, TrainOptions};

impl<'a, B: AutodiffBackend, D: TrainData + ?Sized> Loop<'a, B, D> {
    /// Starts a fresh run or resumes one: the run directory, the model and optimizer (loaded
    /// from the checkpoint on resume) and where the data, schedule and statistics continue.
    pub(super) fn begin<M>(
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
        let base = kiln_infer::base::base_of(config)?;
        let table = ParamTable::of(&model, base.is_some());
        let (start, run_path) = open_run(
            config,
            model,
            (&table, base.as_ref()),
            data,
            &device,
            backend,
            options,
            &mut *comm,
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
        let system = (lead && config.tracking.system_metrics)
            .then(|| SystemSampler::new(device_memory_probe(&device)))
            .flatten();
        let mut lp = Loop {
            config,
            data,
            loader,
            device,
            world,
            unit: data.unit(),
            table,
            base,
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
            system,
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

    /// Rank 0's sinks: `metrics.jsonl` (and through it the trackers of `[tracking]`), the
    /// console and the caller's; each hears of the start
    /// (and the resume), and of the config as an artifact.
    pub(super) fn open_sinks(
        &mut self,
        run: RunDir,
        backend: BackendKind,
        params: usize,
        resume: Option<ResumeEvent>,
        options: &TrainOptions,
    ) -> Result<()> {
        let tracked = Tracked::new(self.config, &self.run_path)?;
        self.sinks.push(Box::new(Jsonl::new(run, tracked)));
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
}

/// Rank 0's run directory, fresh or resumed (the checkpoint loaded into the model and a new
/// optimizer), checked against the other workers and logged.
#[allow(clippy::too_many_arguments)]
pub(super) fn open_run<B: AutodiffBackend, M: TrainModel<B> + AutodiffModule<B>>(
    config: &Config,
    model: M,
    (table, base): (&ParamTable, Option<&BaseRef>),
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
        Some(from) => resume(
            config,
            options,
            from,
            (table, base),
            model,
            optim,
            device,
            lead,
        )?,
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
pub(super) fn worker_devices<B: burn::tensor::backend::Backend>(
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
pub(super) fn create_run_dir(
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
pub(super) fn check_workers(
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
pub(super) fn run_length(config: &Config, batches_per_epoch: Option<usize>) -> Result<usize> {
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
pub(super) fn resume_position(
    state: Option<&TrainState>,
    batches_per_epoch: Option<usize>,
) -> DataPosition {
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
pub(super) fn schedule_at(
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
pub(super) fn agree<B: burn::tensor::backend::Backend>(
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

/// Opens the run directory, finds and verifies the checkpoint, and loads it. Only the `lead`
/// worker (rank 0) changes anything on disk or logs.
#[allow(clippy::too_many_arguments)]
pub(super) fn resume<B: AutodiffBackend, M: Module<B>>(
    config: &Config,
    options: &TrainOptions,
    from: &ResumeFrom,
    (table, base): (&ParamTable, Option<&BaseRef>),
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
    // Before anything in the run directory changes.
    check_base(state.base.as_ref(), base, "the checkpoint")?;
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
