//! Why a checkpoint cannot be used, as cases a caller can tell apart (resume falls back to an
//! older checkpoint on any of them; a tool may treat a config mismatch differently from damage).

use std::path::PathBuf;

/// Why a checkpoint failed verification. Each message names the file and what to do.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint directory, its `state.json` or a file it lists does not exist.
    #[error("{} is missing", path.display())]
    Missing {
        /// The missing file or directory.
        path: PathBuf,
    },
    /// A file exists but cannot be read (permissions, I/O error).
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// A file is shorter than `state.json` records: a write was cut off.
    #[error("{} is truncated: {bytes} of {recorded} bytes", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        bytes: usize,
        /// The length `state.json` records.
        recorded: usize,
    },
    /// A file is longer than `state.json` records.
    #[error("{} is longer than recorded: {bytes} bytes, state.json says {recorded}", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Its length.
        bytes: usize,
        /// The length `state.json` records.
        recorded: usize,
    },
    /// A file's content differs from what was written (its sha256 does not match).
    #[error("{} is corrupted: its sha256 is {}, state.json records {}", path.display(), short(sha256), short(recorded))]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The sha256 of its content.
        sha256: String,
        /// The sha256 `state.json` records.
        recorded: String,
    },
    /// The checkpoint was written under another config than the run's.
    #[error("{}: config hash {} differs from the run's config ({}): the config changed after this checkpoint was written; restore the config, or pass --force to resume with the new one", path.display(), short(recorded), short(expected))]
    ConfigMismatch {
        /// The checkpoint's `state.json`.
        path: PathBuf,
        /// The config hash the checkpoint records.
        recorded: String,
        /// The hash of the run's config.
        expected: String,
    },
    /// A tensor's shape differs from what the run's model needs.
    #[error("{}: tensor {tensor} has shape {shape:?}, but the run's model needs {expected:?}", path.display())]
    ShapeMismatch {
        /// The tensor file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its shape in the checkpoint.
        shape: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// The checkpoint's tensors are not those of the run's model and optimizer (a tensor is
    /// missing, unexpected or of another element type).
    #[error("{}: {detail}", path.display())]
    WrongTensors {
        /// The tensor file.
        path: PathBuf,
        /// Which tensor and how it differs.
        detail: String,
    },
    /// `state.json` or a tensor file cannot be parsed, or was written by another format version.
    #[error("{}{reason}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, starting with its separator (`": ..."` or `" is ..."`).
        reason: String,
    },
    /// The run directory holds no checkpoint.
    #[error("{} holds no checkpoint (no step-<N> directory) to resume from", run.display())]
    NoCheckpoint {
        /// The run directory.
        run: PathBuf,
    },
    /// Every checkpoint of the run failed verification.
    #[error("no checkpoint in {} verifies: {}", run.display(), skipped.iter().map(|s| format!("step-{}: {}", s.step, s.error)).collect::<Vec<_>>().join("; "))]
    NoneVerifies {
        /// The run directory.
        run: PathBuf,
        /// Each checkpoint and why it failed, newest first.
        skipped: Vec<Skipped>,
    },
}

/// A checkpoint that [`crate::find_resumable`] passed over, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// Its step.
    pub step: usize,
    /// Why it cannot be used.
    pub error: CheckpointError,
}

/// The first 12 hex digits of a hash, as messages show it.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
