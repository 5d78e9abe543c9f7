//! The training statistics of a log window, accumulated on the device.

use std::time::{Duration, Instant};

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use kiln_dist::Communicator;
use kiln_models::TrainModel;

use crate::checkpoint::WindowState;
use crate::step::StepStats;

/// Training statistics of the steps since the last log event, accumulated on the device so that
/// logging is the only synchronization.
pub(super) struct Window<B: AutodiffBackend> {
    device: B::Device,
    /// The model's sum names, in the order of its sums.
    names: Vec<String>,
    loss_sum: Tensor<B::InnerBackend, 1>,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
    samples: usize,
    since: Instant,
    /// Evaluation and checkpoint time since `since`, left out of the window's duration.
    excluded: Duration,
    grad_norm: Option<f64>,
    comm_secs: f64,
    /// Seconds inside `train_step` during the window (the rest is the loop's own time).
    pub(super) step_secs: f64,
}

pub(super) struct WindowStats {
    pub(super) loss: f64,
    /// The model's metrics over the window ([`TrainModel::metrics`]).
    pub(super) metrics: Vec<(String, f64)>,
    pub(super) samples_per_sec: f64,
    pub(super) grad_norm: Option<f64>,
    /// This worker's seconds in gradient all-reduces during the window.
    pub(super) comm_secs: f64,
    /// This worker's seconds inside `train_step` during the window.
    pub(super) step_secs: f64,
    /// The window's seconds of training (evaluation and checkpoints excluded).
    pub(super) window_secs: f64,
    /// Seconds the loop waited for the data loader during the window.
    pub(super) data_wait_secs: f64,
}

impl<B: AutodiffBackend> Window<B> {
    pub(super) fn new(device: &B::Device, names: Vec<String>) -> Self {
        Self {
            device: device.clone(),
            loss_sum: Tensor::zeros([1], device),
            sums: vec![Tensor::zeros([1], device); names.len()],
            names,
            samples: 0,
            since: Instant::now(),
            excluded: Duration::ZERO,
            grad_norm: None,
            comm_secs: 0.0,
            step_secs: 0.0,
        }
    }

    pub(super) fn add(&mut self, stats: StepStats<B>, n: usize) {
        self.loss_sum = self.loss_sum.clone() + stats.loss_sum;
        for (total, s) in self.sums.iter_mut().zip(stats.sums) {
            *total = total.clone() + s;
        }
        self.samples += n;
        self.grad_norm = stats.grad_norm.or(self.grad_norm);
        self.comm_secs += stats.comm_secs;
    }

    /// The accumulators, exactly, for a checkpoint.
    pub(super) fn state(&self) -> WindowState {
        WindowState {
            loss_sum: self.loss_sum.clone().into_scalar().elem::<f32>(),
            sums: self
                .names
                .iter()
                .zip(&self.sums)
                .map(|(n, s)| (n.clone(), s.clone().into_scalar().elem::<f64>()))
                .collect(),
            correct: None,
            samples: self.samples,
            grad_norm: self.grad_norm,
        }
    }

    pub(super) fn restore(&mut self, s: &WindowState) {
        self.loss_sum = Tensor::from_floats([s.loss_sum], &self.device);
        self.sums = self
            .names
            .iter()
            .map(|n| Tensor::from_floats([s.sum(n) as f32], &self.device))
            .collect();
        self.samples = s.samples;
        self.grad_norm = s.grad_norm;
    }

    /// Evaluation and checkpoint time does not count against training throughput: the time
    /// since `started` is left out of the window.
    pub(super) fn exclude(&mut self, started: Instant) {
        self.excluded += started.elapsed();
    }

    /// The accumulators summed over all workers, for rank 0's checkpoint.
    pub(super) fn state_of_all(
        &self,
        comm: &mut dyn Communicator<B::InnerBackend>,
    ) -> Result<WindowState> {
        let mut s = self.state();
        if comm.world() > 1 {
            let mut all = vec![f64::from(s.loss_sum), s.samples as f64];
            all.extend(s.sums.values());
            comm.all_reduce_host(&mut all, "the metrics all-reduce")?;
            s.loss_sum = all[0] as f32;
            s.samples = all[1] as usize;
            for (v, total) in s.sums.values_mut().zip(&all[2..]) {
                *v = *total;
            }
        }
        Ok(s)
    }

    /// The statistics of the window over all workers; starts a new window.
    pub(super) fn take<M: TrainModel<B>>(
        &mut self,
        model: &M,
        data_wait: Duration,
        comm: &mut dyn Communicator<B::InnerBackend>,
    ) -> Result<WindowStats> {
        let fresh = Window::<B>::new(&self.device, self.names.clone());
        let old = std::mem::replace(self, fresh);
        let secs = (old.since.elapsed().saturating_sub(old.excluded))
            .as_secs_f64()
            .max(1e-9);
        let mut all = vec![old.loss_sum.into_scalar().elem::<f64>(), old.samples as f64];
        all.extend(old.sums.into_iter().map(|s| s.into_scalar().elem::<f64>()));
        if comm.world() > 1 {
            comm.all_reduce_host(&mut all, "the metrics all-reduce")?;
        }
        let n = all[1].max(1.0);
        Ok(WindowStats {
            loss: all[0] / n,
            metrics: model.metrics(&all[2..], all[1]),
            samples_per_sec: n / secs,
            grad_norm: old.grad_norm,
            comm_secs: old.comm_secs,
            step_secs: old.step_secs,
            window_secs: secs,
            data_wait_secs: data_wait.as_secs_f64(),
        })
    }
}
