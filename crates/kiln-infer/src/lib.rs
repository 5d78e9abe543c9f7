//! Running a trained Kiln model outside the training loop, and what it runs on: the run's data
//! from its `[data]` section ([`RunData`]), loading weights ([`weights`]; a LoRA fine-tune's base:
//! [`base`]), evaluation on a split
//! ([`evaluate`], [`eval_run`]) and text generation ([`generate`]).
//!
//! Training (kiln-train), exporting (kiln-export) and serving all build on this crate; it
//! depends only on the config, the data and the models.

#![warn(missing_docs)]

pub mod base;
pub mod data;
pub mod eval;
pub mod generate;
pub mod weights;

pub use data::{RunData, Split, Splits, TextData};
pub use eval::{eval_run, eval_sums, evaluate, EvalResult, EvalSums};
pub use generate::{generate, generate_with, Generation, Sampling};
