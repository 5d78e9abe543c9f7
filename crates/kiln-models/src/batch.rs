//! Batches in host memory, as Kiln's data loaders build them for its own models, and their move
//! onto a device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::train::Targets;
use crate::Input;

/// A batch in host memory: model inputs and one target class per output row.
pub struct HostBatch {
    /// The model inputs.
    pub input: HostInput,
    /// One target class per output row.
    pub y: Vec<i64>,
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

impl HostBatch {
    /// Moves the batch onto `device`.
    pub fn to_device<B: Backend>(self, device: &B::Device) -> (Input<B>, Tensor<B, 1, Int>) {
        let n = self.y.len();
        let y = Tensor::from_data(TensorData::new(self.y, [n]), device);
        let input = match self.input {
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
        };
        (input, y)
    }
}

impl HostBatch {
    /// A data-parallel worker's shard of a batch of `whole` samples.
    pub fn from_samples(b: kiln_data::Batch, whole: usize) -> Self {
        HostBatch {
            input: HostInput::Features {
                x: b.x,
                rows: b.y.len(),
            },
            whole,
            y: b.y,
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
        }
    }
}

impl Targets for HostBatch {
    /// Number of targets (samples, or token positions).
    fn targets(&self) -> usize {
        self.y.len()
    }
}
