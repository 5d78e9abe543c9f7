//! The in-memory [`Dataset`] and the deterministic train/held-out [`split`].

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// An in-memory dataset, stored row-major: sample `i` is
/// `features[i * sample_len .. (i + 1) * sample_len]`. Each sample has a class (`labels`) or,
/// for a regression, a target value (`targets`).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// All samples' values, one sample after the other.
    pub features: Vec<f32>,
    /// Shape of one sample: `[1, rows, cols]` for IDX images, `[n_features]` for CSV.
    pub sample_shape: Vec<usize>,
    /// One class index per sample, each `< num_classes` (empty for a regression).
    pub labels: Vec<u32>,
    /// Number of classes the labels are drawn from.
    pub num_classes: usize,
    /// One name per class: from the CSV header, or `"0"`, `"1"`, ... for IDX files.
    pub class_names: Vec<String>,
    /// A regression's target value per sample, in the label's units (empty for classes).
    pub targets: Vec<f32>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len().max(self.targets.len())
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of values in one sample (the product of `sample_shape`).
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The values of sample `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.features[i * n..(i + 1) * n]
    }

    /// A new dataset holding the given samples, in the given order.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.sample_len());
        for &i in indices {
            features.extend_from_slice(self.sample(i));
        }
        Dataset {
            features,
            sample_shape: self.sample_shape.clone(),
            labels: pick(&self.labels, indices),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            targets: pick(&self.targets, indices),
        }
    }
}

/// `values[i]` for each of `indices`; nothing from an empty `values`.
pub(crate) fn pick<T: Copy>(values: &[T], indices: &[usize]) -> Vec<T> {
    if values.is_empty() {
        return Vec::new();
    }
    indices.iter().map(|&i| values[i]).collect()
}

/// Splits `ds` deterministically into `(rest, held_out)`.
///
/// The indices `0..len` are shuffled with a `ChaCha8Rng` seeded from `seed`;
/// the first `round(len * fraction)` of them form the held-out part, the
/// others the rest. Inside each part samples keep their original order.
/// A `fraction` of 0 gives an empty held-out dataset.
///
/// # Panics
/// If `fraction` is not in `[0, 1)`.
pub fn split(ds: &Dataset, fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let (rest, held) = split_indices(ds.len(), fraction, seed);
    (ds.subset(&rest), ds.subset(&held))
}

/// The indices `0..n` split as [`split`] splits a dataset of `n` samples: `(rest, held_out)`,
/// each in increasing order.
///
/// # Panics
/// If `fraction` is not in `[0, 1)`.
pub fn split_indices(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    assert!(
        (0.0..1.0).contains(&fraction),
        "split fraction must be in [0, 1), got {fraction}"
    );
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let held_len = ((n as f64) * fraction).round() as usize;
    let (held, rest) = order.split_at_mut(held_len);
    held.sort_unstable();
    rest.sort_unstable();
    (rest.to_vec(), held.to_vec())
}

/// [`split_indices`] class by class: of the indices whose `keys` are equal, `round(count *
/// fraction)` are held out, chosen by one `ChaCha8Rng` seeded from `seed` and drawn from the
/// classes in key order. Each split then has the classes in the data's proportions.
///
/// # Panics
/// If `fraction` is not in `[0, 1)`.
pub fn stratified_split_indices<K: Ord>(
    keys: &[K],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    assert!(
        (0.0..1.0).contains(&fraction),
        "split fraction must be in [0, 1), got {fraction}"
    );
    let mut classes: std::collections::BTreeMap<&K, Vec<usize>> = Default::default();
    for (i, k) in keys.iter().enumerate() {
        classes.entry(k).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut rest, mut held) = (Vec::new(), Vec::new());
    for members in classes.values_mut() {
        members.shuffle(&mut rng);
        let held_len = ((members.len() as f64) * fraction).round() as usize;
        held.extend_from_slice(&members[..held_len]);
        rest.extend_from_slice(&members[held_len..]);
    }
    held.sort_unstable();
    rest.sort_unstable();
    (rest, held)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A dataset of `n` samples of shape `[2]`; sample `i` is `[i, -i]` with label `i % 3`.
    pub(crate) fn toy(n: usize) -> Dataset {
        Dataset {
            features: (0..n).flat_map(|i| [i as f32, -(i as f32)]).collect(),
            sample_shape: vec![2],
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
            targets: Vec::new(),
        }
    }

    /// The original indices of a subset of [`toy`] (recovered from the first feature).
    fn ids(ds: &Dataset) -> Vec<usize> {
        (0..ds.len()).map(|i| ds.sample(i)[0] as usize).collect()
    }

    #[test]
    fn subset_copies_samples_and_labels_in_order() {
        let ds = toy(10);
        let sub = ds.subset(&[7, 2, 2]);
        assert_eq!(sub.len(), 3);
        assert_eq!(sub.features, vec![7.0, -7.0, 2.0, -2.0, 2.0, -2.0]);
        assert_eq!(sub.labels, vec![1, 2, 2]);
        assert_eq!(sub.sample_shape, vec![2]);
        assert_eq!(sub.class_names, ds.class_names);
    }

    #[test]
    fn a_regression_subset_carries_its_targets_and_batches_them() {
        let mut ds = toy(6);
        ds.labels.clear();
        ds.targets = (0..6).map(|i| i as f32 * 1.5).collect();
        let sub = ds.subset(&[4, 1]);
        assert_eq!((sub.len(), sub.targets.clone()), (2, vec![6.0, 1.5]));
        assert!(sub.labels.is_empty());
        let batch = crate::Batch::gather(&ds, &[5, 0]);
        assert_eq!((batch.len(), batch.targets), (2, vec![7.5, 0.0]));
        assert!(batch.y.is_empty());
    }

    #[test]
    fn split_is_deterministic_disjoint_sorted_and_complete() {
        let ds = toy(101);
        let (train, val) = split(&ds, 0.2, 42);
        assert_eq!(val.len(), 20);
        assert_eq!(train.len(), 81);
        assert_eq!(split(&ds, 0.2, 42), (train.clone(), val.clone()));

        let (train_ids, val_ids) = (ids(&train), ids(&val));
        assert!(train_ids.windows(2).all(|w| w[0] < w[1]));
        assert!(val_ids.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<usize> = train_ids.iter().chain(&val_ids).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..101).collect::<Vec<_>>());

        let (_, other_val) = split(&ds, 0.2, 43);
        assert_ne!(
            ids(&other_val),
            val_ids,
            "a different seed should pick other samples"
        );
    }

    #[test]
    fn split_with_zero_fraction_holds_out_nothing() {
        let ds = toy(10);
        let (train, val) = split(&ds, 0.0, 1);
        assert_eq!(train, ds);
        assert!(val.is_empty());
        assert_eq!(val.sample_shape, vec![2]);
    }

    #[test]
    fn a_stratified_split_holds_out_each_class_in_proportion() {
        // 60 of class a, 30 of b, 10 of c.
        let keys: Vec<char> = (0..100)
            .map(|i| match i % 10 {
                0 => 'c',
                1..=3 => 'b',
                _ => 'a',
            })
            .collect();
        let (rest, held) = stratified_split_indices(&keys, 0.2, 7);
        let count = |ids: &[usize], k: char| ids.iter().filter(|&&i| keys[i] == k).count();
        assert_eq!(
            [count(&held, 'a'), count(&held, 'b'), count(&held, 'c')],
            [12, 6, 2]
        );
        assert_eq!(rest.len() + held.len(), 100);
        assert!(held.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(stratified_split_indices(&keys, 0.2, 7), (rest, held));
    }

    #[test]
    #[should_panic(expected = "split fraction must be in [0, 1)")]
    fn split_rejects_fraction_of_one() {
        split(&toy(10), 1.0, 1);
    }
}
