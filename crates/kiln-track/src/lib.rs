//! Experiment tracking for Kiln runs: TensorBoard event files written by Kiln itself, MLflow over
//! its REST API, the machinery every tracker shares, and the views of runs on their own: curves
//! as pictures ([`plot`]), a table of runs ([`runs`]) and sweeps of a config's keys ([`sweep`]).
//!
//! A run's `metrics.jsonl` is the source of truth; trackers receive its lines as [`Record`]s,
//! live during training (on their own thread, [`Tracking`], so that tracking never stops or
//! slows the run) or afterwards from the file (`kiln sync`). A [`Tracker`] is anything that
//! takes a run's start ([`RunInfo`]: the config, its hyperparameters, tags), its records and its
//! end ([`RunStatus`]).
#![warn(missing_docs)]

pub mod mlflow;
pub mod plot;
pub mod queue;
pub mod record;
pub mod runs;
pub mod sweep;
pub mod tensorboard;
pub mod tracker;

pub use queue::{Report, TrackerReport, Tracking};
pub use record::Record;
pub use tensorboard::TensorBoard;
pub use tracker::{params_of, Param, RunInfo, RunStatus, Tracker};
