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

#![warn(missing_docs)]

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

pub use launch::{
    check_launch, check_mpi_world, join_mpi_job, launcher_rank, local_rank, rank_devices,
    slurm_step_tasks, MpiEnv, MpiJob,
};
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

/// Every worker's `text`, in rank order: what each says about itself (e.g. its host and
/// device), gathered through [`Communicator::all_gather_u64`] in 8-byte pieces.
pub fn all_gather_text<B: Backend>(
    comm: &mut dyn Communicator<B>,
    text: &str,
    what: &str,
) -> Result<Vec<String>> {
    let bytes = text.as_bytes();
    let lens = comm.all_gather_u64(bytes.len() as u64, what)?;
    let pieces = lens.iter().max().map_or(0, |&n| (n as usize).div_ceil(8));
    let mut gathered = vec![Vec::new(); lens.len()];
    for i in 0..pieces {
        let mut piece = [0u8; 8];
        let chunk = bytes.get(i * 8..).unwrap_or_default();
        let n = chunk.len().min(8);
        piece[..n].copy_from_slice(&chunk[..n]);
        for (rank, value) in comm
            .all_gather_u64(u64::from_le_bytes(piece), what)?
            .into_iter()
            .enumerate()
        {
            gathered[rank].extend_from_slice(&value.to_le_bytes());
        }
    }
    Ok(gathered
        .into_iter()
        .zip(lens)
        .map(|(mut b, n)| {
            b.truncate(n as usize);
            String::from_utf8_lossy(&b).into_owned()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 0 of two workers; rank 1 says `other`.
    struct Pair {
        other: Vec<u8>,
        calls: usize,
    }

    impl<B: Backend> Communicator<B> for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            2
        }
        fn engine(&self) -> &'static str {
            "test"
        }
        fn all_reduce_sum(&mut self, x: Tensor<B, 1>, _what: &str) -> Result<Tensor<B, 1>> {
            Ok(x)
        }
        fn all_reduce_host(&mut self, _x: &mut [f64], _what: &str) -> Result<()> {
            Ok(())
        }
        fn all_gather_u64(&mut self, value: u64, _what: &str) -> Result<Vec<u64>> {
            let theirs = match self.calls {
                0 => self.other.len() as u64,
                i => {
                    let mut piece = [0u8; 8];
                    let chunk = self.other.get((i - 1) * 8..).unwrap_or_default();
                    let n = chunk.len().min(8);
                    piece[..n].copy_from_slice(&chunk[..n]);
                    u64::from_le_bytes(piece)
                }
            };
            self.calls += 1;
            Ok(vec![value, theirs])
        }
    }

    #[test]
    fn texts_of_any_length_are_gathered_in_rank_order() {
        let texts = [
            "",
            "cpu",
            "node-17/Cuda(3) é",
            "a longer host name/WgpuDevice",
        ];
        for mine in texts {
            for theirs in texts {
                let mut pair = Pair {
                    other: theirs.as_bytes().to_vec(),
                    calls: 0,
                };
                let all = all_gather_text::<burn::backend::Flex>(&mut pair, mine, "t").unwrap();
                assert_eq!(all, vec![mine, theirs]);
            }
        }
        let alone = all_gather_text::<burn::backend::Flex>(&mut Single, "abc", "t").unwrap();
        assert_eq!(alone, vec!["abc"]);
    }
}
