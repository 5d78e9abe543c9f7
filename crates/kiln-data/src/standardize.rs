//! Feature standardization `(x - mean) / std`, fitted on the training split only: the one
//! routine that training, `kiln predict`, the ONNX graph and serving apply.

use crate::Dataset;

/// Means and standard deviations to standardize features with.
///
/// Either one entry per feature ([`Standardizer::per_feature`]) or a single
/// entry applied to every value ([`Standardizer::global`]).
/// As JSON (export manifests): `{"mean": [...], "std": [...]}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    /// Mean of each feature, or one global mean.
    pub mean: Vec<f32>,
    /// Population standard deviation of each feature, or one global one.
    pub std: Vec<f32>,
}

impl Standardizer {
    /// One mean and standard deviation per feature (position inside a sample),
    /// for tabular data.
    pub fn per_feature(train: &Dataset) -> Standardizer {
        let width = train.sample_len();
        let columns = (0..width).map(|j| train.features.iter().skip(j).step_by(width));
        let (mean, std) = columns.map(mean_and_std).unzip();
        Standardizer { mean, std }
    }

    /// A single mean and standard deviation over all values, for images.
    pub fn global(train: &Dataset) -> Standardizer {
        let (mean, std) = mean_and_std(train.features.iter());
        Standardizer {
            mean: vec![mean],
            std: vec![std],
        }
    }

    /// Checks a standardizer read from a file (an export's manifest) for samples of `features`
    /// values: as many means as standard deviations, one or one per feature, all finite.
    pub fn check(&self, features: usize) -> Result<(), String> {
        let n = self.mean.len();
        if n != self.std.len() {
            return Err(format!(
                "{n} means but {} standard deviations",
                self.std.len()
            ));
        }
        if n != 1 && n != features {
            return Err(format!(
                "{n} values; it needs 1 or one per feature ({features})"
            ));
        }
        if !self.mean.iter().chain(&self.std).all(|v| v.is_finite()) {
            return Err("a mean or standard deviation is not a finite number".into());
        }
        Ok(())
    }

    /// The factor each feature is multiplied by after centering: `1 / std`, and 1 for a
    /// standard deviation of 0 (a constant feature).
    pub fn scale(&self) -> Vec<f32> {
        self.std
            .iter()
            .map(|&s| if s == 0.0 { 1.0 } else { 1.0 / s })
            .collect()
    }

    /// Replaces every value `x` of the row-major rows `x` (`features` values each) by
    /// `(x - mean) * scale` (see [`Standardizer::scale`]).
    ///
    /// # Panics
    /// If this is a per-feature standardizer of another width than `features`.
    pub fn apply_rows(&self, x: &mut [f32], features: usize) {
        let width = self.mean.len();
        assert!(
            width == 1 || width == features,
            "standardizer has {width} features but the samples have {features}"
        );
        let scale = self.scale();
        if width == 1 {
            let (mean, scale) = (self.mean[0], scale[0]);
            x.iter_mut().for_each(|v| *v = (*v - mean) * scale);
            return;
        }
        for sample in x.chunks_exact_mut(width) {
            for ((v, mean), scale) in sample.iter_mut().zip(&self.mean).zip(&scale) {
                *v = (*v - mean) * scale;
            }
        }
    }

    /// Standardizes every sample of `ds` ([`Standardizer::apply_rows`]).
    ///
    /// # Panics
    /// If this is a per-feature standardizer fitted on samples of another length.
    pub fn apply(&self, ds: &mut Dataset) {
        let features = ds.sample_len();
        self.apply_rows(&mut ds.features, features);
    }
}

/// Mean and population standard deviation of `values` (computed in `f64`);
/// both are 0 for no values.
fn mean_and_std<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> (f32, f32) {
    let (count, sum) = values
        .clone()
        .fold((0usize, 0.0f64), |(n, s), &x| (n + 1, s + f64::from(x)));
    if count == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / count as f64;
    let squares: f64 = values.map(|&x| (f64::from(x) - mean).powi(2)).sum();
    (mean as f32, (squares / count as f64).sqrt() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::toy;
    use crate::split;

    fn assert_close(actual: f32, expected: f32) {
        assert!((actual - expected).abs() < 1e-4, "{actual} != {expected}");
    }

    /// 40 samples of 3 features: a ramp, a scaled noisy ramp, and a constant.
    fn tabular() -> Dataset {
        let mut ds = toy(40);
        ds.sample_shape = vec![3];
        ds.features = (0..40)
            .flat_map(|i| {
                let t = i as f32;
                [t, 100.0 + 5.0 * t + (i % 7) as f32, 3.0]
            })
            .collect();
        ds
    }

    #[test]
    fn per_feature_fitted_on_train_standardizes_train() {
        let (mut train, mut val) = split(&tabular(), 0.25, 7);
        let standardizer = Standardizer::per_feature(&train);
        assert_eq!(standardizer.mean.len(), 3);
        assert_eq!(standardizer.std[2], 0.0);
        let val_before = val.clone();

        standardizer.apply(&mut train);
        let after = Standardizer::per_feature(&train);
        for j in 0..2 {
            assert_close(after.mean[j], 0.0);
            assert_close(after.std[j], 1.0);
        }
        // The constant feature is only shifted, not divided by zero.
        assert_close(after.mean[2], 0.0);
        assert_close(after.std[2], 0.0);

        standardizer.apply(&mut val);
        for (i, x) in val.features.iter().enumerate() {
            let j = i % 3;
            let expected = match j {
                2 => 0.0,
                _ => (val_before.features[i] - standardizer.mean[j]) / standardizer.std[j],
            };
            assert_close(*x, expected);
        }
    }

    #[test]
    fn global_uses_one_scalar_over_all_values() {
        let (mut train, _) = split(&tabular(), 0.25, 7);
        let standardizer = Standardizer::global(&train);
        assert_eq!(standardizer.mean.len(), 1);
        assert_eq!(standardizer.std.len(), 1);

        standardizer.apply(&mut train);
        let after = Standardizer::global(&train);
        assert_close(after.mean[0], 0.0);
        assert_close(after.std[0], 1.0);
    }

    #[test]
    fn mean_and_std_match_hand_computation() {
        let values = [2.0f32, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean_and_std(values.iter()), (5.0, 2.0));
        assert_eq!(mean_and_std([].iter()), (0.0, 0.0));
    }
}
