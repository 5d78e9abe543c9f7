//! Kiln's checkpoint format, independent of any tensor library, and the names of every file
//! in a run directory ([`layout`]).
//!
//! ```text
//! <run>/step-<N>/
//!   model.safetensors       parameters under dotted names (layers.0.weight)
//!   optimizer.safetensors   optimizer state under the same names (layers.0.weight.exp_avg)
//!   state.json              step, loop/RNG/schedule state, config hash, sha256 of each file
//! <run>/latest              "step-<N>": the newest complete checkpoint
//! <run>/best                "step-<N>": the checkpoint with the best validation metric
//! ```
//!
//! A checkpoint is written into `step-<N>.tmp/`, every file synced, then renamed into place;
//! the pointers change only after that. Reading verifies every file against the sha256 recorded
//! in `state.json`, so a truncated, bit-flipped or missing file is named, never loaded.

#![warn(missing_docs)]

mod error;
mod fsutil;
pub mod layout;
mod read;
mod tensors;
mod write;

pub use error::{CheckpointError, Skipped};
pub use fsutil::write_atomic;
pub use layout::{parse_step_dir, step_dir_name};
pub use read::{find_resumable, list_steps, read_pointer, verify, Verified};
pub use tensors::{HostTensor, Payload};
pub use write::{remove_partial, write_checkpoint, Pending, Writer, Written};

/// Version of the on-disk format, recorded in every `state.json`.
pub const FORMAT: &str = "kiln-checkpoint/1";
