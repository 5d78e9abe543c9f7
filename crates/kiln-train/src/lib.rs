//! Kiln's training: a step-based loop on burn's autodiff, optimizers and LR schedulers, generic
//! over the backend.

#![warn(missing_docs)]

pub mod allreduce;
pub mod checkpoint;
pub mod clip;
pub mod data;
pub mod events;
pub mod fit;
pub mod optim;
pub mod parts;
pub mod progress;
pub mod resume;
pub mod saver;
pub mod scaler;
pub mod schedule;
pub mod sinks;
pub mod sources;
pub mod step;
pub mod system;
pub mod tracked;
pub mod trainer;
pub mod workers;

pub use data::{Micro, RunData, Split, Splits, TrainData, TrainStream};
pub use events::{Event, RunEnd, RunStart, SharedSink, Sink, Status};
pub use fit::Trainer;
pub use kiln_infer::{evaluate, weights, EvalResult};
pub use resume::{resume_config, ResumeFrom};
pub use sources::{Source, SourceData};
pub use trainer::{builtin_model, train, train_with, TrainOptions, TrainSummary};
pub use workers::{train_as_launched, train_on_devices, train_on_devices_with};
