//! Several devices of one process, one worker thread each, their gradients all-reduced by
//! burn-collective: `kiln train --devices cuda:0,cuda:1`.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use kiln_core::{BackendKind, Config};
use kiln_dist::local::{Local, LocalGroup};
use kiln_dist::Watchdog;

use crate::trainer::{train, TrainOptions, TrainSummary};

/// Trains on every device of `devices` as data-parallel workers (rank = position in the list);
/// returns rank 0's summary. The first worker to fail stops the run with its error.
pub fn train_on_devices<B: AutodiffBackend>(
    config: &Config,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
) -> Result<TrainSummary> {
    let world = devices.len();
    if world == 1 {
        let device = devices.into_iter().next().expect("one device");
        return train::<B>(config, device, backend, options, &mut kiln_dist::Single);
    }
    let group = LocalGroup::new(world);
    let timeout = Duration::from_secs_f64(config.distributed.timeout_secs);
    let (sender, results) = mpsc::channel();
    for (rank, device) in devices.into_iter().enumerate() {
        let (config, options, group, sender) = (
            config.clone(),
            options.clone(),
            group.clone(),
            sender.clone(),
        );
        let stop = options.stop.clone();
        std::thread::Builder::new()
            .name(format!("kiln-worker-{rank}"))
            .spawn(move || {
                let who = format!("device {rank} of {world}");
                let watchdog = Watchdog::new(who, timeout, Some(stop), None);
                let result = Local::<B::InnerBackend>::join(rank, group, device.clone(), watchdog)
                    .and_then(|mut comm| train::<B>(&config, device, backend, options, &mut comm))
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
