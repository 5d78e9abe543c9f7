//! What a run reports, as typed events, and the [`Sink`]s that receive them: `metrics.jsonl`
//! ([`crate::sinks::Jsonl`]), the progress bar and log lines ([`crate::sinks::Console`]), and
//! whatever a program adds ([`crate::Trainer::sink`]).
//!
//! A sink's life cycle follows the run: [`Sink::start`] with the resolved config (and the step a
//! resumed run continues from), [`Sink::event`] for each event, [`Sink::step`] after each
//! training step, [`Sink::artifact`] for files worth keeping, and [`Sink::end`] with the status.
//! Only rank 0 of a data-parallel run has sinks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use kiln_core::Config;
use serde::Serialize;

use kiln_infer::EvalResult;

/// One entry of a run's record; as JSON, one line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// The statistics of a window of training steps.
    Train(TrainEvent),
    /// An evaluation of the validation or test split.
    Eval(EvalEvent),
    /// A checkpoint written.
    Checkpoint(CheckpointEvent),
    /// The run resumed from a checkpoint.
    Resume(ResumeEvent),
    /// The process's memory and CPU use over a log window.
    System(crate::system::SystemEvent),
}

impl Event {
    /// The step the event belongs to.
    pub fn step(&self) -> usize {
        match self {
            Event::Train(e) => e.step,
            Event::Eval(e) => e.step,
            Event::Checkpoint(e) => e.step,
            Event::Resume(e) => e.step,
            Event::System(e) => e.step,
        }
    }
}

/// A log window of training steps (`"split": "train"`): the mean loss and the model's metrics
/// over the window, the learning rate of its last step, throughput and timing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainEvent {
    /// The window's last step.
    pub step: usize,
    /// Epochs done (2.5: half-way through the third); for a stream source, its pass.
    pub epoch: f64,
    /// Always `"train"`.
    pub split: &'static str,
    /// Mean loss per target over the window.
    pub loss: f64,
    /// The model's metrics over the window ([`kiln_models::TrainModel::metrics`]).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Learning rate of the window's last step.
    pub lr: f64,
    /// Targets (samples, or tokens) per second of training.
    pub samples_per_sec: f64,
    /// The same, for language models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// Seconds the loop waited for the data loader in the window.
    pub data_wait_secs: f64,
    /// Seconds inside the optimizer steps.
    pub step_secs: f64,
    /// The window's seconds of training (evaluation and checkpoints excluded).
    pub window_secs: f64,
    /// The gradient norm of the last step, when clipping computes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// f16: the loss scale and the steps skipped for overflow so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16: steps skipped because the scaled gradients overflowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// Data-parallel runs: the number of workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Data-parallel runs: rank 0's seconds in gradient all-reduces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_secs: Option<f64>,
}

/// An evaluation (`"split": "valid"` or `"test"`): the loss, the model's metrics and the
/// number of targets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalEvent {
    /// The step evaluated after.
    pub step: usize,
    /// Epochs done at that step.
    pub epoch: f64,
    /// `"valid"` or `"test"`.
    pub split: &'static str,
    /// The loss, metrics and target count.
    #[serde(flatten)]
    pub result: EvalResult,
}

/// A checkpoint written in the background (`"event": "checkpoint"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointEvent {
    /// The checkpoint's step.
    pub step: usize,
    /// Always `"checkpoint"`.
    pub event: &'static str,
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds the background write took.
    pub write_secs: f64,
    /// Seconds the loop was blocked (copying the state to host memory).
    pub stall_secs: f64,
    /// Steps of the older checkpoints removed by `checkpoint.keep_last`.
    pub pruned: Vec<usize>,
}

/// The run resumed (`"event": "resume"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResumeEvent {
    /// The step it continues after.
    pub step: usize,
    /// Always `"resume"`.
    pub event: &'static str,
    /// The checkpoint it resumed from.
    pub checkpoint: PathBuf,
    /// Newer checkpoints that did not verify (when resuming the newest one of a run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Vec<Skipped>>,
}

/// A checkpoint passed over on resume, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    /// Its step.
    pub step: usize,
    /// What was wrong with it.
    pub reason: String,
}

/// How a run (this invocation of it) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It trained to its last step.
    Completed,
    /// A signal stopped it, after a checkpoint.
    Interrupted,
    /// It stopped at `until_step`, after a checkpoint.
    Paused,
    /// An error stopped it.
    Failed,
}

impl Status {
    /// `"completed"`, `"interrupted"`, `"paused"` or `"failed"`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Interrupted => "interrupted",
            Status::Paused => "paused",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a sink learns when the run starts.
#[derive(Clone, Copy, Debug)]
pub struct RunStart<'a> {
    /// The resolved config.
    pub config: &'a Config,
    /// The run directory.
    pub run_dir: &'a Path,
    /// The step a resumed run continues after (`None` for a fresh run).
    pub resumed_from: Option<usize>,
    /// The run's last step.
    pub total_steps: usize,
    /// The backend, e.g. `"flex"`.
    pub backend: &'a str,
    /// Rank 0's device.
    pub device: &'a str,
    /// Data-parallel workers and how they exchange gradients.
    pub workers: usize,
    /// `"single"`, `"burn-collective"`, `"mpi"` or `"nccl"`.
    pub engine: &'a str,
    /// The model's parameter count.
    pub params: usize,
    /// The data, in one line.
    pub data: &'a str,
}

/// What a sink learns when the run ends.
#[derive(Clone, Copy, Debug)]
pub struct RunEnd<'a> {
    /// How it ended.
    pub status: Status,
    /// The last step trained.
    pub step: usize,
    /// The run's last step.
    pub total_steps: usize,
    /// The run directory.
    pub run_dir: &'a Path,
    /// The last checkpoint written.
    pub checkpoint: Option<&'a Path>,
    /// Seconds this invocation ran.
    pub seconds: f64,
    /// Seconds it waited for data in total.
    pub data_wait_seconds: f64,
    /// The test split's result (a completed run).
    pub test: Option<&'a EvalResult>,
    /// The error that stopped a failed run.
    pub error: Option<&'a str>,
}

/// Receives what a run reports. Every method but [`Sink::event`] has a default that does
/// nothing; an error from a sink stops the run (a sink that must not, such as one that talks to
/// a server, logs its own errors and returns `Ok`).
pub trait Sink: Send {
    /// The run starts, fresh or resumed.
    fn start(&mut self, _run: &RunStart) -> Result<()> {
        Ok(())
    }

    /// An event of the run's record.
    fn event(&mut self, event: &Event) -> Result<()>;

    /// A training step finished (every step; an event follows on logging steps).
    fn step(&mut self, _step: usize) {}

    /// A message for a person watching the run (a signal was received, a setting changed).
    fn message(&mut self, _text: &str) {}

    /// A file the run wrote that a tracker may keep (`name`: what it is, e.g. `"config"`).
    fn artifact(&mut self, _name: &str, _path: &Path) -> Result<()> {
        Ok(())
    }

    /// The run ends with `end.status`.
    fn end(&mut self, _end: &RunEnd) -> Result<()> {
        Ok(())
    }
}

/// A sink of the caller's, shared so that [`crate::TrainOptions`] stays cheap to clone (rank 0
/// alone uses it).
#[derive(Clone)]
pub struct SharedSink(pub Arc<Mutex<dyn Sink>>);

impl SharedSink {
    /// Shares `sink`.
    pub fn new(sink: impl Sink + 'static) -> Self {
        SharedSink(Arc::new(Mutex::new(sink)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn Sink) -> T) -> T {
        let mut sink = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut *sink)
    }
}

impl fmt::Debug for SharedSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSink")
    }
}

impl Sink for SharedSink {
    fn start(&mut self, run: &RunStart) -> Result<()> {
        self.with(|s| s.start(run))
    }
    fn event(&mut self, event: &Event) -> Result<()> {
        self.with(|s| s.event(event))
    }
    fn step(&mut self, step: usize) {
        self.with(|s| s.step(step))
    }
    fn message(&mut self, text: &str) {
        self.with(|s| s.message(text))
    }
    fn artifact(&mut self, name: &str, path: &Path) -> Result<()> {
        self.with(|s| s.artifact(name, path))
    }
    fn end(&mut self, end: &RunEnd) -> Result<()> {
        self.with(|s| s.end(end))
    }
}

/// The sinks of a run, called in order.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink>>);

impl Sinks {
    /// No sinks (data-parallel workers other than rank 0).
    pub fn none() -> Self {
        Sinks(Vec::new())
    }

    /// Adds `sink` after the others.
    pub fn push(&mut self, sink: Box<dyn Sink>) {
        self.0.push(sink);
    }

    /// [`Sink::start`] on every sink.
    pub fn start(&mut self, run: &RunStart) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.start(run))
    }

    /// [`Sink::event`] on every sink.
    pub fn event(&mut self, event: Event) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.event(&event))
    }

    /// [`Sink::step`] on every sink.
    pub fn step(&mut self, step: usize) {
        self.0.iter_mut().for_each(|s| s.step(step));
    }

    /// [`Sink::message`] on every sink.
    pub fn message(&mut self, text: &str) {
        self.0.iter_mut().for_each(|s| s.message(text));
    }

    /// [`Sink::artifact`] on every sink.
    pub fn artifact(&mut self, name: &str, path: &Path) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.artifact(name, path))
    }

    /// [`Sink::end`] on every sink; every sink hears of the end even when one fails (the first
    /// error is returned).
    pub fn end(&mut self, end: &RunEnd) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.0 {
            if let Err(e) = s.end(end) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn train_event() -> TrainEvent {
        TrainEvent {
            step: 20,
            epoch: 1.5,
            split: "train",
            loss: 0.25,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.875)]),
            lr: 0.01,
            samples_per_sec: 1000.0,
            tokens_per_sec: None,
            data_wait_secs: 0.0,
            step_secs: 0.5,
            window_secs: 0.6,
            grad_norm: Some(1.5),
            loss_scale: None,
            skipped_steps: None,
            workers: None,
            comm_secs: None,
        }
    }

    #[test]
    fn events_are_the_json_lines_of_earlier_versions() {
        let train = serde_json::to_value(Event::Train(train_event())).unwrap();
        assert_eq!(
            train,
            json!({"step": 20, "epoch": 1.5, "split": "train", "loss": 0.25, "accuracy": 0.875,
                   "lr": 0.01, "samples_per_sec": 1000.0, "data_wait_secs": 0.0,
                   "step_secs": 0.5, "window_secs": 0.6, "grad_norm": 1.5})
        );
        let result = EvalResult {
            loss: 0.5,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.75)]),
            samples: 40,
        };
        let eval = Event::Eval(EvalEvent {
            step: 20,
            epoch: 1.5,
            split: "valid",
            result,
        });
        assert_eq!(
            serde_json::to_value(&eval).unwrap(),
            json!({"step": 20, "epoch": 1.5, "split": "valid", "loss": 0.5, "accuracy": 0.75,
                   "samples": 40})
        );
        let resume = Event::Resume(ResumeEvent {
            step: 40,
            event: "resume",
            checkpoint: "run/step-40".into(),
            skipped: None,
        });
        assert_eq!(
            serde_json::to_value(&resume).unwrap(),
            json!({"step": 40, "event": "resume", "checkpoint": "run/step-40"})
        );
        assert_eq!(resume.step(), 40);
    }

    /// Records what it hears.
    struct Recorder(Arc<Mutex<Vec<String>>>, bool);

    impl Sink for Recorder {
        fn event(&mut self, event: &Event) -> Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("event {}", event.step()));
            Ok(())
        }
        fn end(&mut self, end: &RunEnd) -> Result<()> {
            self.0.lock().unwrap().push(format!("end {}", end.status));
            anyhow::ensure!(!self.1, "this sink fails at the end");
            Ok(())
        }
    }

    #[test]
    fn every_sink_hears_of_the_end_even_when_one_fails() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let mut sinks = Sinks::none();
        sinks.push(Box::new(Recorder(heard.clone(), true)));
        sinks.push(Box::new(SharedSink::new(Recorder(heard.clone(), false))));
        sinks.event(Event::Train(train_event())).unwrap();
        let end = RunEnd {
            status: Status::Failed,
            step: 3,
            total_steps: 10,
            run_dir: Path::new("run"),
            checkpoint: None,
            seconds: 1.0,
            data_wait_seconds: 0.0,
            test: None,
            error: Some("boom"),
        };
        let err = sinks.end(&end).unwrap_err();
        assert!(err.to_string().contains("fails at the end"));
        assert_eq!(
            *heard.lock().unwrap(),
            ["event 20", "event 20", "end failed", "end failed"]
        );
    }
}
