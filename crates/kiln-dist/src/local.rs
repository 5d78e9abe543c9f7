//! The devices of one process, one worker thread each: gradients are all-reduced by
//! burn-collective's local mode; host values go through shared memory.

use std::sync::{Arc, Barrier, Mutex};

use anyhow::{anyhow, Result};
use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::{Communicator, Watchdog};

/// What the worker threads of one process share.
pub struct LocalGroup {
    world: usize,
    barrier: Barrier,
    /// One slot per rank for host collectives.
    slots: Mutex<Vec<Vec<f64>>>,
}

impl LocalGroup {
    /// The shared state of `world` worker threads; give each thread a clone for [`Local::join`].
    /// Every host collective then waits until all `world` threads have called it.
    pub fn new(world: usize) -> Arc<LocalGroup> {
        Arc::new(LocalGroup {
            world,
            barrier: Barrier::new(world),
            slots: Mutex::new(vec![Vec::new(); world]),
        })
    }

    /// Each rank's `x`, in rank order (every rank must call this with the same length).
    fn exchange(&self, rank: usize, x: &[f64]) -> Vec<Vec<f64>> {
        // The first wait makes sure every rank has read the previous exchange.
        self.barrier.wait();
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[rank] = x.to_vec();
        self.barrier.wait();
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One worker thread of a process that trains on several devices.
pub struct Local<B: Backend> {
    rank: usize,
    group: Arc<LocalGroup>,
    peer: PeerId,
    watchdog: Watchdog,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> Local<B> {
    /// Registers `device` as peer `rank` of the group; returns once every rank has registered.
    pub fn join(
        rank: usize,
        group: Arc<LocalGroup>,
        device: B::Device,
        watchdog: Watchdog,
    ) -> Result<Local<B>> {
        let peer = PeerId::from(rank);
        let config = CollectiveConfig::default().with_num_devices(group.world);
        {
            let _g = watchdog.guard("registering the devices with burn-collective");
            collective::register::<B>(peer, device, config).map_err(|e| {
                anyhow!("device {rank}: burn-collective refused to register it: {e:?}")
            })?;
        }
        Ok(Local {
            rank,
            group,
            peer,
            watchdog,
            _backend: std::marker::PhantomData,
        })
    }
}

impl<B: Backend> Drop for Local<B> {
    fn drop(&mut self) {
        if let Err(e) = collective::finish_collective::<B>(self.peer) {
            tracing::debug!("burn-collective finish of peer {}: {e:?}", self.rank);
        }
    }
}

impl<B: Backend> Communicator<B> for Local<B> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.group.world
    }
    fn engine(&self) -> &'static str {
        "burn-collective"
    }

    fn all_reduce_sum(&mut self, x: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>> {
        let _g = self.watchdog.guard(what);
        let out = collective::all_reduce::<B>(
            self.peer,
            x.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| anyhow!("{what}: burn-collective all-reduce failed: {e:?}"))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn all_reduce_host(&mut self, x: &mut [f64], what: &str) -> Result<()> {
        let _g = self.watchdog.guard(what);
        let all = self.group.exchange(self.rank, x);
        for (i, v) in x.iter_mut().enumerate() {
            *v = all.iter().map(|s| s[i]).sum();
        }
        Ok(())
    }

    fn all_gather_u64(&mut self, value: u64, what: &str) -> Result<Vec<u64>> {
        let _g = self.watchdog.guard(what);
        // u64 fingerprints do not fit f64 exactly: exchange them as two 32-bit halves.
        let all = self.group.exchange(
            self.rank,
            &[(value >> 32) as f64, (value & 0xffff_ffff) as f64],
        );
        Ok(all
            .iter()
            .map(|s| ((s[0] as u64) << 32) | s[1] as u64)
            .collect())
    }
}
