//! Several devices of one process, one worker thread each, their gradients all-reduced by
//! burn-collective: `kiln train --devices cuda:0,cuda:1`.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use kiln_core::{BackendKind, Config};
use kiln_dist::local::{Local, LocalGroup};
use kiln_dist::Watchdog;

use burn::module::AutodiffModule;
use kiln_models::TrainModel;

use crate::data::{RunData, TrainData};
use crate::trainer::{builtin_model_starting, train_with, TrainOptions, TrainSummary};

/// Trains as this process was launched: alone or with several `devices` of this process
/// ([`train_on_devices`]), or as one rank of the MPI job `mpi` (see `kiln_dist::join_mpi_job`),
/// where an error stops the whole job at once. Returns the summary and whether this process is
/// rank 0 (the one that reports).
pub fn train_as_launched<B: AutodiffBackend>(
    config: &Config,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
    mpi: Option<kiln_dist::MpiJob>,
) -> Result<(TrainSummary, bool)> {
    match mpi {
        None => Ok((
            train_on_devices::<B>(config, devices, backend, options)?,
            true,
        )),
        Some(job) => train_in_mpi_job::<B>(job, config, devices, backend, options),
    }
}

/// Trains as one rank of an MPI job on its one device.
#[cfg(feature = "mpi")]
fn train_in_mpi_job<B: AutodiffBackend>(
    job: kiln_dist::MpiJob,
    config: &Config,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
) -> Result<(TrainSummary, bool)> {
    use kiln_core::config::Engine;
    let device = devices
        .into_iter()
        .next()
        .context("an MPI rank needs a device")?;
    let nccl = match config.distributed.engine {
        Engine::Auto => None,
        Engine::Mpi => Some(false),
        Engine::Nccl => Some(true),
    };
    let rank = job.rank();
    let result =
        kiln_dist::mpi::process_communicator::<B::InnerBackend>(job.clone(), &device, nccl)
            .and_then(|mut comm| {
                crate::train::<B>(config, device, backend, options, comm.as_mut())
            });
    match result {
        Ok(summary) => Ok((summary, rank == 0)),
        Err(e) => {
            eprintln!("error: rank {rank} of {}: {e:#}", job.size());
            job.abort(1)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn train_in_mpi_job<B: AutodiffBackend>(
    job: kiln_dist::MpiJob,
    _config: &Config,
    _devices: Vec<B::Device>,
    _backend: BackendKind,
    _options: TrainOptions,
) -> Result<(TrainSummary, bool)> {
    match job {}
}

/// Trains on every device of `devices` as data-parallel workers (rank = position in the list);
/// returns rank 0's summary. The first worker to fail stops the run with its error.
pub fn train_on_devices<B: AutodiffBackend>(
    config: &Config,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
) -> Result<TrainSummary> {
    let data = std::sync::Arc::new(RunData::load(config)?);
    let fresh = options.resume.is_none();
    let build = move |config: &Config, data: &RunData, device: &B::Device| {
        builtin_model_starting::<B>(config, data, device, fresh)
    };
    train_on_devices_with(config, data, build, devices, backend, options)
}

/// [`train_on_devices`] on any data with a model of the caller's, which `build` makes on each
/// worker's device (see [`crate::train_with`]).
pub fn train_on_devices_with<B, D, M, F>(
    config: &Config,
    data: std::sync::Arc<D>,
    build: F,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
) -> Result<TrainSummary>
where
    B: AutodiffBackend,
    D: TrainData + 'static,
    M: TrainModel<B, HostBatch = D::Batch> + AutodiffModule<B>,
    M::InnerModule: TrainModel<B::InnerBackend, HostBatch = D::Batch>,
    F: Fn(&Config, &D, &B::Device) -> Result<M> + Send + Sync + 'static,
{
    let world = devices.len();
    if world == 1 {
        let device = devices.into_iter().next().expect("one device");
        return train_with(
            config,
            &*data,
            &build,
            device,
            backend,
            options,
            &mut kiln_dist::Single,
        );
    }
    // burn-collective holds one group of devices per process: runs on several devices in one
    // process (tests, a sweep in a user's program) take turns.
    static ONE_GROUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_GROUP.lock().unwrap_or_else(|e| e.into_inner());
    let build = std::sync::Arc::new(build);
    let group = LocalGroup::new(world);
    let timeout = Duration::from_secs_f64(config.distributed.timeout_secs);
    let (sender, results) = mpsc::channel();
    for (rank, device) in devices.into_iter().enumerate() {
        let (config, options, group, sender, build, data) = (
            config.clone(),
            options.clone(),
            group.clone(),
            sender.clone(),
            build.clone(),
            data.clone(),
        );
        let stop = options.stop.clone();
        std::thread::Builder::new()
            .name(format!("kiln-worker-{rank}"))
            .spawn(move || {
                let who = format!("device {rank} of {world}");
                let watchdog = Watchdog::new(who, timeout, Some(stop), None);
                let result = Local::<B::InnerBackend>::join(rank, group, device.clone(), watchdog)
                    .and_then(|mut comm| {
                        train_with(
                            &config, &*data, &*build, device, backend, options, &mut comm,
                        )
                    })
                    .with_context(|| format!("device {rank} of {world}"));
                let _ = sender.send((rank, result));
            })
            .context("cannot start a worker thread")?;
    }
    drop(sender);
    let mut lead = None;
    for _ in 0..world {
        let Ok((rank, result)) = results.recv() else {
            bail!("a worker thread stopped without a result (it panicked; see above)");
        };
        let summary = result?;
        if rank == 0 {
            lead = Some(summary);
        }
    }
    lead.context("rank 0 returned no summary")
}
