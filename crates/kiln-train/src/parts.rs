//! The parts of the training loop that decide when something happens, each testable alone:
//! when to evaluate, when to write a checkpoint, which checkpoint is the best, and when the
//! workers stop together. The loop in [`crate::trainer`] asks them, as torchtitan's trainer asks
//! its validator and checkpointer.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use kiln_core::config::{BestMetric, CheckpointSection};
use kiln_dist::Communicator;

use crate::checkpoint::Best;
use kiln_infer::EvalResult;

/// When the loop evaluates on the validation split: every `every` steps (0: never) and after
/// the last step.
#[derive(Clone, Copy, Debug)]
pub struct EvalSchedule {
    every: usize,
}

impl EvalSchedule {
    /// Every `every` steps (0: only after the last step).
    pub fn new(every: usize) -> Self {
        Self { every }
    }

    /// Whether to evaluate after `step`; `last`: it is the run's final step.
    pub fn due(&self, step: usize, last: bool) -> bool {
        (self.every > 0 && step.is_multiple_of(self.every)) || last
    }
}

/// When the loop writes a checkpoint: every `every` steps (0: never on a schedule), after the
/// last step, at a new best, and where the run pauses (`until_step`).
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    every: usize,
    pause_at: usize,
}

impl CheckpointPolicy {
    /// Every `every` steps, and at `pause_at` (the step the run stops at).
    pub fn new(every: usize, pause_at: usize) -> Self {
        Self { every, pause_at }
    }

    /// Whether a checkpoint is due after `step`.
    pub fn due(&self, step: usize, last: bool, new_best: bool) -> bool {
        (self.every > 0 && step.is_multiple_of(self.every))
            || last
            || new_best
            || step == self.pause_at
    }
}

/// The best validation result so far by `checkpoint.best_metric`.
#[derive(Clone, Debug)]
pub struct BestTracker {
    metric: Option<BestMetric>,
    /// Smaller is better.
    lower: bool,
    best: Option<Best>,
}

impl BestTracker {
    /// Tracks `checkpoint.best_metric` in its direction (none: nothing is tracked), continuing
    /// from a resumed run's `best`.
    pub fn new(checkpoint: &CheckpointSection, best: Option<Best>) -> Self {
        Self {
            metric: checkpoint.best_metric.clone(),
            lower: checkpoint.best_is_lower(),
            best,
        }
    }

    /// Records the validation result `r` of `step`; true when it is the best so far.
    pub fn observe(&mut self, step: usize, r: &EvalResult) -> Result<bool> {
        let Some(metric) = &self.metric else {
            return Ok(false);
        };
        let value = match metric.metric() {
            "loss" => r.loss,
            name => match r.metric(name) {
                Some(v) => v,
                None => bail!(
                    "checkpoint.best_metric = \"{}\": the model logs no validation metric {name:?}; it logs loss{}",
                    metric.name(),
                    r.metrics.keys().map(|k| format!(", {k}")).collect::<String>()
                ),
            },
        };
        if !BestMetric::improves(value, self.best.as_ref().map(|b| b.value), self.lower) {
            return Ok(false);
        }
        self.best = Some(Best {
            metric: metric.name().to_string(),
            value,
            step,
        });
        Ok(true)
    }

    /// The best result so far.
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }
}

/// Whether the run stops after this step: every worker stops at the same step, so a signal
/// (`stop`) to any of them stops all.
pub fn stop_agreed<B: Backend>(stop: &AtomicBool, comm: &mut dyn Communicator<B>) -> Result<bool> {
    let mut stopping = [f64::from(u8::from(stop.load(Ordering::SeqCst)))];
    if comm.world() > 1 {
        comm.all_reduce_host(&mut stopping, "the stop-flag exchange")?;
    }
    Ok(stopping[0] > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(metric: &str, mode: Option<&str>) -> CheckpointSection {
        let mode = mode.map_or(String::new(), |m| format!("best_mode = {m:?}\n"));
        toml::from_str(&format!("best_metric = {metric:?}\n{mode}")).unwrap()
    }

    fn valid(loss: f64, metrics: &[(&str, f64)]) -> EvalResult {
        EvalResult {
            loss,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            samples: 10,
        }
    }

    #[test]
    fn evaluation_and_checkpoints_fall_on_their_steps_and_the_last_one() {
        let eval = EvalSchedule::new(10);
        let due: Vec<usize> = (1..=25).filter(|&s| eval.due(s, s == 25)).collect();
        assert_eq!(due, [10, 20, 25]);
        assert!(!EvalSchedule::new(0).due(10, false));
        let policy = CheckpointPolicy::new(0, 7);
        assert!(!policy.due(5, false, false));
        assert!(policy.due(5, false, true), "a new best");
        assert!(policy.due(7, false, false), "the pause step");
        assert!(policy.due(9, true, false), "the last step");
        assert!(CheckpointPolicy::new(4, 100).due(8, false, false));
    }

    #[test]
    fn the_best_follows_any_logged_metric_in_its_direction() {
        let mut acc = BestTracker::new(&checkpoint("valid.accuracy", None), None);
        assert!(acc.observe(1, &valid(0.9, &[("accuracy", 0.5)])).unwrap());
        assert!(!acc.observe(2, &valid(0.8, &[("accuracy", 0.4)])).unwrap());
        assert!(acc.observe(3, &valid(0.7, &[("accuracy", 0.6)])).unwrap());
        assert_eq!(acc.best().unwrap().step, 3);
        assert_eq!(acc.best().unwrap().metric, "valid.accuracy");

        // A regression's error: smaller is better by its name, or as configured.
        let mut rmse = BestTracker::new(&checkpoint("valid.rmse", None), None);
        assert!(rmse.observe(1, &valid(1.0, &[("rmse", 2.0)])).unwrap());
        assert!(rmse.observe(2, &valid(1.0, &[("rmse", 1.5)])).unwrap());
        assert!(!rmse.observe(3, &valid(1.0, &[("rmse", 1.7)])).unwrap());
        let mut r2 = BestTracker::new(&checkpoint("valid.r2", Some("max")), None);
        assert!(r2.observe(1, &valid(1.0, &[("r2", 0.1)])).unwrap());
        assert!(!r2.observe(2, &valid(1.0, &[("r2", 0.05)])).unwrap());
        let mut loss = BestTracker::new(&checkpoint("valid.loss", None), None);
        assert!(loss.observe(1, &valid(1.0, &[])).unwrap());
        assert!(loss.observe(2, &valid(0.5, &[])).unwrap());

        // A resumed run continues from its saved best.
        let saved = acc.best().cloned();
        let mut resumed = BestTracker::new(&checkpoint("valid.accuracy", None), saved);
        assert!(!resumed
            .observe(4, &valid(0.7, &[("accuracy", 0.55)]))
            .unwrap());

        // A metric the model does not log is an error naming what it does log.
        let mut missing = BestTracker::new(&checkpoint("valid.f1", None), None);
        let err = missing
            .observe(1, &valid(1.0, &[("accuracy", 0.5)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no validation metric \"f1\"") && err.contains("loss, accuracy"),
            "{err}"
        );
        assert!(!BestTracker::new(&CheckpointSection::default(), None)
            .observe(1, &valid(1.0, &[]))
            .unwrap());
    }

    #[test]
    fn a_best_metric_must_name_a_validation_metric() {
        let err = toml::from_str::<CheckpointSection>("best_metric = \"accuracy\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected \"valid.<metric>\""), "{err}");
    }
}
