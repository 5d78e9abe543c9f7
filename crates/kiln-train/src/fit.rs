//! [`Trainer`]: the library's front door. A run's config, backend and how it starts and stops,
//! then `fit` with the data and a function that builds the model:
//!
//! ```ignore
//! let paused = Trainer::new(&config, BackendKind::Flex).until_step(200).fit::<Cpu, _, _, _>(data, build)?;
//! let done = Trainer::new(&config, BackendKind::Flex).resume(&paused.run_dir).fit::<Cpu, _, _, _>(data, build)?;
//! ```

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use kiln_core::{BackendKind, Config};
use kiln_models::TrainModel;

use crate::data::TrainData;
use crate::events::{SharedSink, Sink};
use crate::resume::ResumeFrom;
use crate::trainer::{TrainOptions, TrainSummary};
use crate::workers::train_on_devices_with;

/// Trains a model on data through Kiln's loop: one device or several of one process
/// ([`Trainer::fit_on`]; MPI ranks call [`crate::train_with`] with their communicator).
#[derive(Clone, Debug)]
pub struct Trainer<'a> {
    config: &'a Config,
    backend: BackendKind,
    options: TrainOptions,
}

impl<'a> Trainer<'a> {
    /// A fresh run of `config` on a backend of kind `backend` (the `B` of `fit`: it decides
    /// which precisions are available and is recorded in `run.json`).
    pub fn new(config: &'a Config, backend: BackendKind) -> Self {
        Trainer {
            config,
            backend,
            options: TrainOptions::default(),
        }
    }

    /// Resumes the run directory `run_dir` from its newest checkpoint that verifies.
    pub fn resume(mut self, run_dir: impl AsRef<Path>) -> Self {
        self.options.resume = Some(ResumeFrom::Latest(run_dir.as_ref().to_path_buf()));
        self
    }

    /// Resumes from `from` (`None`: a fresh run).
    pub fn resume_from(mut self, from: Option<ResumeFrom>) -> Self {
        self.options.resume = from;
        self
    }

    /// Stops after step `step` with a checkpoint, as if preempted (status "paused").
    pub fn until_step(mut self, step: impl Into<Option<usize>>) -> Self {
        self.options.until_step = step.into();
        self
    }

    /// Resumes even under a changed config or number of workers.
    pub fn force(mut self, force: bool) -> Self {
        self.options.force = force;
        self
    }

    /// Adds a sink of the caller's (after `metrics.jsonl` and the console): it hears the run's
    /// start, events, artifacts and end (rank 0 of a data-parallel run).
    pub fn sink(mut self, sink: impl Sink + 'static) -> Self {
        self.options.sinks.push(SharedSink::new(sink));
        self
    }

    /// A flag that, once set (e.g. by a signal handler), stops the run after the current step
    /// with a checkpoint (status "interrupted").
    pub fn stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.options.stop = stop;
        self
    }

    /// Trains the model that `build` makes (from the config and the data, on the device) on
    /// `data`, on `B`'s default device.
    pub fn fit<B, D, M, F>(&self, data: D, build: F) -> Result<TrainSummary>
    where
        B: AutodiffBackend,
        D: TrainData + 'static,
        M: TrainModel<B, HostBatch = D::Batch> + AutodiffModule<B>,
        M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
        F: Fn(&Config, &D, &B::Device) -> Result<M> + Send + Sync + 'static,
    {
        self.fit_on(vec![Default::default()], data, build)
    }

    /// [`Trainer::fit`] with a data-parallel worker on each of `devices` (their gradients
    /// all-reduced by burn-collective), for `data.batch_size` x the number of devices samples
    /// per step; returns rank 0's summary.
    pub fn fit_on<B, D, M, F>(
        &self,
        devices: Vec<B::Device>,
        data: D,
        build: F,
    ) -> Result<TrainSummary>
    where
        B: AutodiffBackend,
        D: TrainData + 'static,
        M: TrainModel<B, HostBatch = D::Batch> + AutodiffModule<B>,
        M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
        F: Fn(&Config, &D, &B::Device) -> Result<M> + Send + Sync + 'static,
    {
        let options = self.options.clone();
        train_on_devices_with(
            self.config,
            Arc::new(data),
            build,
            devices,
            self.backend,
            options,
        )
    }
}
