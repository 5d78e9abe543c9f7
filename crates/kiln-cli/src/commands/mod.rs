//! One module per command: its clap `Args` and an `exec` that calls the libraries.

pub mod drift;
pub mod eval;
pub mod export;
pub mod generate;
pub mod launch;
pub mod plot;
pub mod predict;
pub mod runs;
pub mod serve;
pub mod sweep;
pub mod sync;
pub mod tokenize;
pub mod train;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use kiln_core::{dispatch, BackendKind, BackendTask};

/// A command's work on one device of the backend the user chose (what eval, generate, export
/// and predict do): generic over the backend, so that [`on_device`] instantiates it for each.
pub trait OnDevice {
    /// What the work returns.
    type Output;
    /// Does the work on `device` of backend `B`.
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `work` on the default device of `backend`.
pub fn on_device<W: OnDevice>(backend: BackendKind, work: W) -> Result<W::Output> {
    dispatch(backend, FirstDevice(work))?
}

/// An [`OnDevice`] work as a backend task: inference needs no autodiff.
struct FirstDevice<W>(W);

impl<W: OnDevice> BackendTask for FirstDevice<W> {
    type Output = Result<W::Output>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, _: BackendKind) -> Self::Output {
        let device = devices
            .into_iter()
            .next()
            .context("the backend offers no device")?;
        self.0.run::<B::InnerBackend>(device)
    }
}

/// SIGINT and SIGTERM set the returned flag: the training loop finishes its step, writes a
/// checkpoint and exits 0. A second signal exits at once (status 128 + signal).
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    Ok(stop)
}
