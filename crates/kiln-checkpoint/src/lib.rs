//! Kiln's checkpoint format, independent of any tensor library.
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

mod fsutil;
mod read;
mod tensors;
mod write;

pub use read::{find_resumable, list_steps, read_pointer, verify, Skipped, Verified};
pub use tensors::{read_safetensors, HostTensor, Payload};
pub use write::{remove_partial, write_checkpoint, Pending, Writer, Written};

/// Version of the on-disk format, recorded in every `state.json`.
pub const FORMAT: &str = "kiln-checkpoint/1";

/// Name of the checkpoint directory of `step`.
pub fn step_dir_name(step: usize) -> String {
    format!("step-{step}")
}

/// The step of a checkpoint directory name (`step-<N>`), if it is one.
pub fn parse_step_dir(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_dir_names_round_trip() {
        assert_eq!(parse_step_dir(&step_dir_name(40)), Some(40));
        assert_eq!(parse_step_dir("step-40.tmp"), None);
        assert_eq!(parse_step_dir("step-"), None);
        assert_eq!(parse_step_dir("latest"), None);
    }
}
