//! A split of sample data as the loader and evaluation see it: rows in memory (tables, IDX
//! images) or files of an image folder decoded on demand.

use anyhow::Result;

use crate::batch::batch_count;
use crate::images::ImageSet;
use crate::source::Gather;
use crate::{Batch, Dataset};

/// One split of sample data.
#[derive(Clone, Debug)]
pub enum SampleSplit {
    /// Samples in memory.
    Memory(Dataset),
    /// Image files, decoded batch by batch.
    Images(ImageSet),
}

impl SampleSplit {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            SampleSplit::Memory(d) => d.len(),
            SampleSplit::Images(s) => s.len(),
        }
    }

    /// Whether the split holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample: `[features]` or `[channels, height, width]`.
    pub fn sample_shape(&self) -> Vec<usize> {
        match self {
            SampleSplit::Memory(d) => d.sample_shape.clone(),
            SampleSplit::Images(s) => s.spec.sample_shape(),
        }
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape().iter().product()
    }

    /// The class names, by class index (none for a regression).
    pub fn class_names(&self) -> &[String] {
        match self {
            SampleSplit::Memory(d) => &d.class_names,
            SampleSplit::Images(s) => &s.classes,
        }
    }

    /// The samples `indices` in batches of `batch_size` (the last one may be smaller), built
    /// lazily on the calling thread, unaugmented.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn batches(
        &self,
        indices: Vec<usize>,
        batch_size: usize,
    ) -> impl Iterator<Item = Result<Batch>> + '_ {
        assert!(batch_size > 0, "the batch size must be at least 1");
        (0..batch_count(indices.len(), batch_size)).map(move |b| {
            let end = ((b + 1) * batch_size).min(indices.len());
            self.gather(&indices[b * batch_size..end])
        })
    }

    /// One ordered pass over the split in batches of `batch_size`, for evaluation.
    pub fn eval_batches(&self, batch_size: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.batches((0..self.len()).collect(), batch_size)
    }
}

impl Gather for SampleSplit {
    type Batch = Batch;

    fn len(&self) -> usize {
        SampleSplit::len(self)
    }

    fn gather(&self, indices: &[usize]) -> Result<Batch> {
        match self {
            SampleSplit::Memory(d) => d.gather(indices),
            SampleSplit::Images(s) => s.gather(indices),
        }
    }

    fn gather_in_epoch(&self, indices: &[usize], epoch: usize) -> Result<Batch> {
        match self {
            SampleSplit::Memory(d) => d.gather_in_epoch(indices, epoch),
            SampleSplit::Images(s) => s.gather_in_epoch(indices, epoch),
        }
    }
}
