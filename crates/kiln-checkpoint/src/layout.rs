//! The names of everything in a run directory: the one place that spells them.
//!
//! ```text
//! <output_dir>/<run.name>/
//!   config.toml             the fully resolved config
//!   run.json                backend, devices, workers, kiln version, git commit, start time, seed
//!   metrics.jsonl           one JSON object per event
//!   tokenizer.json          the character vocabulary (runs on text data)
//!   step-<N>/
//!     model.safetensors     parameters under dotted names (layers.0.weight)
//!     optimizer.safetensors optimizer state under the same names (layers.0.weight.exp_avg)
//!     state.json            step, loop/RNG/schedule state, config hash, sha256 of each file
//!   latest                  "step-<N>": the newest complete checkpoint
//!   best                    "step-<N>": the checkpoint with the best validation metric
//!   tb/                     TensorBoard event files (tracking.tensorboard = true)
//! ```

/// The run's fully resolved config.
pub const CONFIG_FILE: &str = "config.toml";
/// Facts about the run (backend, devices, workers, versions), written once.
pub const RUN_INFO_FILE: &str = "run.json";
/// One JSON object per event, appended as the run goes.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The tokenizer of a run on text data.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// What the columns of a run's table mean (a table with a header of column names).
pub const TABLE_FILE: &str = "table.json";
/// A checkpoint's model parameters.
pub const MODEL_FILE: &str = "model.safetensors";
/// A checkpoint's optimizer state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// A checkpoint's state: step, loop state, config hash and the sha256 of each file.
pub const STATE_FILE: &str = "state.json";
/// The pointer to the newest complete checkpoint.
pub const LATEST: &str = "latest";
/// The pointer to the checkpoint with the best validation metric.
pub const BEST: &str = "best";
/// The directory of the run's TensorBoard event files (`tracking.tensorboard = true`).
pub const TENSORBOARD_DIR: &str = "tb";

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
