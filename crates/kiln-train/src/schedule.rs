//! The learning-rate schedule, composed from burn's schedulers: an optional linear warmup, then
//! constant, cosine decay (to `min_lr` at the last step) or step decay.

use anyhow::{anyhow, Result};
use burn::optim::lr_scheduler::{
    cosine::{CosineAnnealingLrScheduler, CosineAnnealingLrSchedulerConfig},
    linear::{LinearLrScheduler, LinearLrSchedulerConfig},
    step::{StepLrScheduler, StepLrSchedulerConfig},
    LrScheduler,
};
use kiln_core::config::{ScheduleKind, ScheduleSection};

enum Main {
    Constant(f64),
    Cosine(CosineAnnealingLrScheduler),
    Step(StepLrScheduler),
}

/// The learning rate of each step: an optional linear warm-up, then the configured schedule
/// (burn's schedulers), resumable from a [`crate::checkpoint::ScheduleState`].
pub struct LrSchedule {
    warmup: Option<LinearLrScheduler>,
    warmup_left: usize,
    main: Main,
}

impl LrSchedule {
    /// The schedule of a run with peak rate `lr` over `total_steps` steps.
    pub fn new(s: &ScheduleSection, lr: f64, total_steps: usize) -> Result<Self> {
        let warmup = match s.warmup_steps {
            0 => None,
            w => Some(
                LinearLrSchedulerConfig::new(lr / w as f64, lr, w - 1)
                    .init()
                    .or_else(|_| LinearLrSchedulerConfig::new(lr, lr, 1).init())
                    .map_err(|e| anyhow!("schedule.warmup_steps: {e}"))?,
            ),
        };
        let decay_steps = total_steps.saturating_sub(s.warmup_steps).max(2);
        let main = match s.kind {
            ScheduleKind::Constant => Main::Constant(lr),
            ScheduleKind::Cosine => Main::Cosine(
                CosineAnnealingLrSchedulerConfig::new(lr, decay_steps - 1)
                    .with_min_lr(s.min_lr)
                    .init()
                    .map_err(|e| anyhow!("schedule.kind = \"cosine\": {e}"))?,
            ),
            ScheduleKind::Step => Main::Step(
                StepLrSchedulerConfig::new(lr, s.step_size)
                    .with_gamma(s.gamma)
                    .init()
                    .map_err(|e| anyhow!("schedule.step_size: {e}"))?,
            ),
        };
        Ok(Self {
            warmup,
            warmup_left: s.warmup_steps,
            main,
        })
    }

    /// The learning rate of the next step.
    pub fn next_lr(&mut self) -> f64 {
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            if let Some(w) = &mut self.warmup {
                return w.step();
            }
        }
        match &mut self.main {
            Main::Constant(lr) => *lr,
            Main::Cosine(c) => c.step(),
            Main::Step(s) => s.step(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(s: ScheduleSection, total: usize) -> Vec<f64> {
        let mut sch = LrSchedule::new(&s, 0.1, total).unwrap();
        (0..total).map(|_| sch.next_lr()).collect()
    }

    #[test]
    fn warmup_then_cosine_reaches_min_at_the_end() {
        let s = ScheduleSection {
            kind: ScheduleKind::Cosine,
            warmup_steps: 4,
            min_lr: 0.01,
            ..Default::default()
        };
        let l = lrs(s, 20);
        assert!((l[0] - 0.025).abs() < 1e-12, "{l:?}");
        assert!((l[3] - 0.1).abs() < 1e-12, "{l:?}");
        assert!((l[4] - 0.1).abs() < 1e-12, "{l:?}");
        assert!((l[19] - 0.01).abs() < 1e-12, "{l:?}");
        assert!(l[4..].windows(2).all(|w| w[1] <= w[0]), "{l:?}");
    }

    #[test]
    fn step_decay() {
        let s = ScheduleSection {
            kind: ScheduleKind::Step,
            step_size: 3,
            gamma: 0.5,
            ..Default::default()
        };
        let l = lrs(s, 7);
        assert_eq!(l, vec![0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]);
    }
}
