//! Communicators for data-parallel training. A [`Communicator`] connects the workers of one run
//! (devices of a process, processes of a job) and offers the few collectives Kiln's training
//! loop needs: a sum all-reduce of a fused 1-D gradient tensor, a sum all-reduce of host values
//! (metrics, flags), and an all-gather of a fingerprint to check that all workers agree.
//!
//! Implementations, each on an existing engine:
//! - [`Single`]: one worker; every collective is the identity.
//! - [`local::Local`]: the devices of one process, one thread each, through burn-collective.
//! - [`mpi::Mpi`] (feature `mpi`): processes, through MPI, on host buffers (any backend).
//! - [`nccl::Nccl`] (features `cuda` and `mpi`): CUDA GPUs of many processes, through NCCL, its
//!   unique id broadcast over MPI.
//!
//! Every collective runs under a [`Watchdog`]: a worker that dies, hangs or never joins makes
//! the others stop with an error naming the collective after `distributed.timeout_secs`.

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub mod launch;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(all(feature = "cuda", feature = "mpi"))]
pub mod nccl;
pub mod watchdog;

pub use launch::{launcher_rank, local_rank, slurm_step_tasks, MpiEnv};
pub use watchdog::Watchdog;

/// The collectives of data-parallel training, for the workers of one run. Every worker calls
/// the same collectives in the same order; `B` is the (inner, non-autodiff) backend the
/// gradients live on.
pub trait Communicator<B: Backend>: Send {
    /// This worker's index, `0..world`. Rank 0 writes metrics, progress and checkpoints.
    fn rank(&self) -> usize;
    /// Number of workers.
    fn world(&self) -> usize;
    /// The engine, for logs: "single", "burn-collective", "mpi" or "nccl".
    fn engine(&self) -> &'static str;
    /// The element-wise sum of `x` over all workers; every worker receives it.
    fn all_reduce_sum(&mut self, x: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>>;
    /// The element-wise sum of host values over all workers, in place.
    fn all_reduce_host(&mut self, x: &mut [f64], what: &str) -> Result<()>;
    /// Every worker's `value`, in rank order.
    fn all_gather_u64(&mut self, value: u64, what: &str) -> Result<Vec<u64>>;
}

/// One worker alone: the collectives change nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl<B: Backend> Communicator<B> for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&mut self, x: Tensor<B, 1>, _what: &str) -> Result<Tensor<B, 1>> {
        Ok(x)
    }
    fn all_reduce_host(&mut self, _x: &mut [f64], _what: &str) -> Result<()> {
        Ok(())
    }
    fn all_gather_u64(&mut self, value: u64, _what: &str) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
}
