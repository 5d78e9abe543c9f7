//! The loop itself: steps, log windows, validation, checkpoints and the end of a run.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use kiln_core::Config;
use kiln_dist::Communicator;
use kiln_models::{Targets, TrainModel};

use crate::checkpoint::{DataPosition, OptimizerInfo, RngState, ScheduleState, TrainState};
use crate::data::{Split, TrainData, TrainStream};
use crate::events::{EvalEvent, Event, RunEnd, Status, TrainEvent};
use crate::parts::stop_agreed;
use crate::saver::Saver;
use crate::step::train_step;
use kiln_infer::{eval_sums, EvalResult, EvalSums};

use super::{Loop, TrainSummary};

impl<'a, B: AutodiffBackend, D: TrainData + ?Sized> Loop<'a, B, D> {
    /// Trains until the end or `until_step`, or until a signal stops every worker: each step
    /// trains, then the parts decide whether to log, evaluate, checkpoint or stop.
    pub(super) fn steps<M>(&mut self, mut model: M, stop: &AtomicBool) -> Result<(M, Status)>
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
    pub(super) fn next_batches<M: TrainModel<B, HostBatch = D::Batch>>(
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
    pub(super) fn epoch(&self) -> f64 {
        match self.batches_per_epoch {
            Some(bpe) => self.micro_done as f64 / bpe as f64,
            None => self.position.epoch as f64,
        }
    }

    /// One optimizer step on the micro-batches, timed into the log window.
    pub(super) fn train<M: TrainModel<B> + AutodiffModule<B>>(
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
        if self.table.has_buffers() {
            // burn's running statistics (batch norm's) keep each update aside until the next
            // one or a sync, so a checkpoint would save them one update behind; merging them
            // after every step makes the saved values those of the step, and a resumed run
            // continues exactly as an uninterrupted one.
            let _ = model.valid();
        }
        self.window.step_secs += started.elapsed().as_secs_f64();
        self.window.add(stats, n);
        Ok(model)
    }

    /// Ends the log window: its event (in `metrics.jsonl`, on the progress line).
    pub(super) fn log_window<M: TrainModel<B>>(&mut self, model: &M, lr: f64) -> Result<()> {
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
        self.sinks.event(Event::Train(event))?;
        match self.system.as_mut().and_then(|s| s.sample(self.step)) {
            Some(system) => self.sinks.event(Event::System(system)),
            None => Ok(()),
        }
    }

    /// Evaluates on the validation split when due; whether the result is a new best.
    pub(super) fn validate<M>(&mut self, model: &M, last: bool) -> Result<bool>
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
    pub(super) fn checkpoint<M: Module<B>>(
        &mut self,
        model: &M,
        lr: f64,
        new_best: bool,
    ) -> Result<()> {
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
                base: self.base.clone(),
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
    pub(super) fn finish<M>(
        &mut self,
        model: &M,
        status: Status,
        started: Instant,
    ) -> Result<TrainSummary>
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
    pub(super) fn last_checkpoint(&mut self) -> Result<Option<PathBuf>> {
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
    pub(super) fn fail(&mut self, error: &anyhow::Error, started: Instant) {
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

    pub(super) fn summary(
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
pub(super) fn run_end<'s>(
    status: Status,
    s: &'s TrainSummary,
    error: Option<&'s str>,
) -> RunEnd<'s> {
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
pub(super) struct Closed;

impl<T> TrainStream<T> for Closed {
    fn next_batch(&mut self) -> Result<crate::data::Micro<T>> {
        bail!("the training stream is closed")
    }
}

/// Evaluates `split` with each worker taking every `world`-th batch; the sums are combined.
pub(super) fn evaluate_sharded<B, D, M>(
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
