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
use crate::trainer::{builtin_model, train_with, TrainOptions, TrainSummary};

/// Trains on every device of `devices` as data-parallel workers (rank = position in the list);
/// returns rank 0's summary. The first worker to fail stops the run with its error.
pub fn train_on_devices<B: AutodiffBackend>(
    config: &Config,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
) -> Result<TrainSummary> {
    let data = std::sync::Arc::new(RunData::load(config)?);
    train_on_devices_with(config, data, builtin_model::<B>, devices, backend, options)
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
