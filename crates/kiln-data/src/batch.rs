//! Host batches and the sequential evaluation pass.

use anyhow::Result;

use crate::dataset::pick;
use crate::source::Gather;
use crate::Dataset;

/// A batch in host memory, ready to become a tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `batch_len * sample_len` values, one sample after the other.
    pub x: Vec<f32>,
    /// `[batch_len, ...sample_shape]`.
    pub x_shape: Vec<usize>,
    /// One class index per sample (empty for a regression).
    pub y: Vec<i64>,
    /// A regression's target value per sample (empty for classes).
    pub targets: Vec<f32>,
}

impl Batch {
    /// Number of samples in the batch.
    pub fn len(&self) -> usize {
        self.y.len().max(self.targets.len())
    }

    /// Whether the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the samples `indices` of `ds` into a batch.
    pub(crate) fn gather(ds: &Dataset, indices: &[usize]) -> Batch {
        let mut x = Vec::with_capacity(indices.len() * ds.sample_len());
        for &i in indices {
            x.extend_from_slice(ds.sample(i));
        }
        let mut x_shape = vec![indices.len()];
        x_shape.extend_from_slice(&ds.sample_shape);
        Batch {
            x,
            x_shape,
            y: pick(&ds.labels, indices)
                .into_iter()
                .map(i64::from)
                .collect(),
            targets: pick(&ds.targets, indices),
        }
    }
}

/// An in-memory dataset is a random-access source that copies a whole batch at once.
impl Gather for Dataset {
    type Batch = Batch;

    fn len(&self) -> usize {
        Dataset::len(self)
    }

    fn gather(&self, indices: &[usize]) -> Result<Batch> {
        Ok(Batch::gather(self, indices))
    }
}

/// Number of batches of `batch_size` needed to cover `len` samples (the last one may be smaller).
pub(crate) fn batch_count(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size)
}

/// One ordered pass over `dataset` in batches of `batch_size` (the last one
/// may be smaller), for evaluation. Batches are built lazily on the calling
/// thread.
///
/// # Panics
/// If `batch_size` is 0.
pub fn eval_batches(dataset: &Dataset, batch_size: usize) -> impl Iterator<Item = Batch> + '_ {
    assert!(batch_size > 0, "eval batch size must be at least 1");
    let batches = batch_count(dataset.len(), batch_size);
    (0..batches).map(move |index| {
        let start = index * batch_size;
        let end = (start + batch_size).min(dataset.len());
        let indices: Vec<usize> = (start..end).collect();
        Batch::gather(dataset, &indices)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::toy;

    #[test]
    fn gather_builds_shapes_and_labels() {
        let ds = toy(5);
        let batch = Batch::gather(&ds, &[4, 0]);
        assert_eq!(batch.x, vec![4.0, -4.0, 0.0, -0.0]);
        assert_eq!(batch.x_shape, vec![2, 2]);
        assert_eq!(batch.y, vec![1, 0]);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn eval_batches_cover_every_sample_once_in_order() {
        let ds = toy(10);
        let batches: Vec<Batch> = eval_batches(&ds, 4).collect();
        assert_eq!(batches.len(), 3);
        let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert_eq!(batches[2].x_shape, vec![2, 2]);
        let x: Vec<f32> = batches.iter().flat_map(|b| b.x.clone()).collect();
        let y: Vec<i64> = batches.iter().flat_map(|b| b.y.clone()).collect();
        assert_eq!(x, ds.features);
        assert_eq!(
            y,
            ds.labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn eval_batches_of_an_empty_dataset_is_empty() {
        assert_eq!(eval_batches(&toy(0), 4).count(), 0);
    }
}
