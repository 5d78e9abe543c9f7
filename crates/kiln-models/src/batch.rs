//! Batches in host memory, as Kiln's data loaders build them for its own models, and their move
//! onto a device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::train::Targets;
use crate::Input;

/// A batch in host memory: model inputs and one target class per output row (or, for a
/// regression, one target value per sample).
pub struct HostBatch {
    /// The model inputs.
    pub input: HostInput,
    /// One target class per output row (empty for a regression).
    pub y: Vec<i64>,
    /// A regression's target value per sample, in the target's units (empty for classes).
    pub values: Vec<f32>,
    /// Targets of the whole batch this one is a data-parallel worker's shard of (its own
    /// targets when alone).
    pub whole: usize,
}

/// The inputs of a [`HostBatch`].
pub enum HostInput {
    /// `[rows, features]`.
    Features {
        /// Row-major values, `rows * features` of them.
        x: Vec<f32>,
        /// Samples in the batch.
        rows: usize,
    },
    /// `[rows, t]` token ids.
    Tokens {
        /// Row-major token ids, `rows * t` of them.
        x: Vec<i64>,
        /// Sequences in the batch.
        rows: usize,
        /// Tokens per sequence.
        t: usize,
    },
}

/// A batch's labels on the device.
pub enum Labels<B: Backend> {
    /// One class per output row.
    Classes(Tensor<B, 1, Int>),
    /// A regression's target value per sample, in the target's units.
    Values(Tensor<B, 1>),
}

impl HostBatch {
    /// Moves the batch onto `device`: its inputs and classes (a classifier's or a language
    /// model's batch; see [`HostBatch::to_device_labels`] for any batch).
    pub fn to_device<B: Backend>(self, device: &B::Device) -> (Input<B>, Tensor<B, 1, Int>) {
        let n = self.y.len();
        let y = Tensor::from_data(TensorData::new(self.y, [n]), device);
        (Self::input_to_device(self.input, device), y)
    }

    /// Moves the batch onto `device`: its inputs and its labels, classes or values.
    pub fn to_device_labels<B: Backend>(self, device: &B::Device) -> (Input<B>, Labels<B>) {
        let labels = if self.values.is_empty() {
            let n = self.y.len();
            Labels::Classes(Tensor::from_data(TensorData::new(self.y, [n]), device))
        } else {
            let n = self.values.len();
            Labels::Values(Tensor::from_data(TensorData::new(self.values, [n]), device))
        };
        (Self::input_to_device(self.input, device), labels)
    }

    fn input_to_device<B: Backend>(input: HostInput, device: &B::Device) -> Input<B> {
        match input {
            HostInput::Features { x, rows } => {
                let features = x.len() / rows.max(1);
                Input::Features(Tensor::from_data(
                    TensorData::new(x, [rows, features]),
                    device,
                ))
            }
            HostInput::Tokens { x, rows, t } => {
                Input::Tokens(Tensor::from_data(TensorData::new(x, [rows, t]), device))
            }
        }
    }
}

impl HostBatch {
    /// A data-parallel worker's shard of a batch of `whole` samples.
    pub fn from_samples(b: kiln_data::Batch, whole: usize) -> Self {
        let rows = b.len();
        HostBatch {
            input: HostInput::Features { x: b.x, rows },
            whole,
            y: b.y,
            values: b.targets,
        }
    }
}

impl From<kiln_data::Batch> for HostBatch {
    /// A whole batch of samples.
    fn from(b: kiln_data::Batch) -> Self {
        let whole = b.len();
        HostBatch::from_samples(b, whole)
    }
}

impl From<kiln_data::TokenBatch> for HostBatch {
    fn from(b: kiln_data::TokenBatch) -> Self {
        HostBatch {
            input: HostInput::Tokens {
                x: b.x,
                rows: b.rows,
                t: b.block_size,
            },
            whole: b.y.len(),
            y: b.y,
            values: Vec::new(),
        }
    }
}

impl Targets for HostBatch {
    /// Number of targets (samples, or token positions).
    fn targets(&self) -> usize {
        self.y.len().max(self.values.len())
    }
}
