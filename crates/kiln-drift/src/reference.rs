//! What an export records about each input feature of its training data, and how a batch of
//! new values is compared with it.
//!
//! A **numeric** feature keeps its decile edges and the training proportions between them (for
//! the PSI), and a seeded uniform sample of at most [`SAMPLE`] values (for the two-sample
//! Kolmogorov-Smirnov test). A **categorical** feature keeps each category's training
//! proportion (for the chi-square test and the Jensen-Shannon distance). A feature drifts when
//! its test's p-value is below the significance level divided by the number of features
//! (Bonferroni: the chance of any false alarm over all features stays at the level).

use serde::{Deserialize, Serialize};

use crate::reservoir::Reservoir;
use crate::stats::{chi_square, chi_square_two_sample, jensen_shannon, ks_two_sample, psi, Test};

/// Reference values kept per numeric feature for the two-sample test.
pub const SAMPLE: usize = 1000;
/// Values the decile edges and proportions are estimated from (a larger uniform sample).
const EDGE_SAMPLE: usize = 20_000;
/// PSI bins per numeric feature.
const BINS: usize = 10;

/// One feature of the training data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    /// The feature's name (a column, or a summary of an image such as `mean_intensity`).
    pub name: String,
    /// What is kept of it.
    #[serde(flatten)]
    pub kind: FeatureKind,
}

/// What is kept of a feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FeatureKind {
    /// Numbers.
    Numeric {
        /// Values seen.
        count: u64,
        /// The interior bin edges (deciles; fewer when values repeat).
        edges: Vec<f64>,
        /// The training proportion in each bin (`edges.len() + 1` bins).
        proportions: Vec<f64>,
        /// A uniform sample of at most [`SAMPLE`] training values.
        sample: Vec<f64>,
    },
    /// Categories.
    Categorical {
        /// Values seen (0 in a reference that kept no count: its proportions are then taken
        /// as exact).
        #[serde(default)]
        count: u64,
        /// The categories, in a fixed order.
        categories: Vec<String>,
        /// Each category's training proportion.
        proportions: Vec<f64>,
    },
}

impl FeatureReference {
    /// The reference of a numeric feature from its training `values` (a seeded sample of them).
    pub fn numeric(name: &str, values: impl IntoIterator<Item = f64>, seed: u64) -> Self {
        Self::numeric_with_sample(name, values, seed, SAMPLE)
    }

    /// As [`FeatureReference::numeric`], keeping a sample of at most `sample` values (a
    /// reference of many features keeps fewer of each to stay within its size bound).
    pub fn numeric_with_sample(
        name: &str,
        values: impl IntoIterator<Item = f64>,
        seed: u64,
        sample: usize,
    ) -> Self {
        let mut edge_sample = Reservoir::new(EDGE_SAMPLE, seed);
        let mut sample = Reservoir::new(sample.max(1), seed ^ 0x9e37_79b9_7f4a_7c15);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            edge_sample.offer(v);
            sample.offer(v);
        }
        let count = sample.seen();
        let mut sorted = edge_sample.into_items();
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (1..BINS)
            .filter_map(|k| sorted.get(k * sorted.len() / BINS).copied())
            .collect();
        edges.dedup();
        let proportions = proportions(&edges, &sorted);
        let mut sample = sample.into_items();
        sample.sort_by(f64::total_cmp);
        Self {
            name: name.to_string(),
            kind: FeatureKind::Numeric {
                count,
                edges,
                proportions,
                sample,
            },
        }
    }

    /// The reference of a categorical feature from its training `values`.
    pub fn categorical<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
        for v in values {
            *counts.entry(v).or_default() += 1;
        }
        let total: u64 = counts.values().sum();
        Self {
            name: name.to_string(),
            kind: FeatureKind::Categorical {
                count: total,
                categories: counts.keys().map(|c| c.to_string()).collect(),
                proportions: counts
                    .values()
                    .map(|&c| c as f64 / total.max(1) as f64)
                    .collect(),
            },
        }
    }

    /// Compares `current` values of the feature with the reference. `alpha` is the
    /// significance level already divided among the features (Bonferroni).
    pub fn compare(&self, current: &Current, alpha: f64) -> FeatureDrift {
        match (&self.kind, current) {
            (
                FeatureKind::Numeric {
                    edges,
                    proportions: reference,
                    sample,
                    ..
                },
                Current::Numbers(values),
            ) => {
                let mut sorted: Vec<f64> =
                    values.iter().copied().filter(|v| v.is_finite()).collect();
                sorted.sort_by(f64::total_cmp);
                let test = ks_two_sample(sample, &sorted);
                FeatureDrift {
                    name: self.name.clone(),
                    test: "ks",
                    statistic: test.statistic,
                    p_value: test.p_value,
                    psi: Some(psi(reference, &proportions(edges, &sorted))),
                    jensen_shannon: None,
                    drifted: test.p_value < alpha,
                }
            }
            (
                FeatureKind::Categorical {
                    count,
                    categories,
                    proportions: reference,
                },
                Current::Categories(values),
            ) => {
                // Categories the training data never had count in one extra bin.
                let mut counts = vec![0u64; categories.len() + 1];
                for v in values {
                    let i = (categories.binary_search(v)).unwrap_or(categories.len());
                    counts[i] += 1;
                }
                let mut expected = reference.clone();
                expected.push(0.0);
                let unseen = counts[categories.len()];
                let test = if unseen > 0 {
                    // A category never seen in training: drift, whatever the others do.
                    Test {
                        statistic: f64::INFINITY,
                        p_value: 0.0,
                    }
                } else if *count > 0 {
                    // Both samples' noise: the reference's counts against the new ones.
                    let reference: Vec<f64> = reference.iter().map(|p| p * *count as f64).collect();
                    chi_square_two_sample(&reference, &counts[..categories.len()])
                } else {
                    chi_square(&counts[..categories.len()], reference)
                };
                let current: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
                FeatureDrift {
                    name: self.name.clone(),
                    test: "chi_square",
                    statistic: test.statistic,
                    p_value: test.p_value,
                    psi: None,
                    jensen_shannon: Some(jensen_shannon(&expected, &current)),
                    drifted: test.p_value < alpha,
                }
            }
            _ => self.not_compared(),
        }
    }

    /// The comparison that cannot be made (values of the other kind): test `none`, no drift.
    fn not_compared(&self) -> FeatureDrift {
        FeatureDrift {
            name: self.name.clone(),
            test: "none",
            statistic: f64::NAN,
            p_value: f64::NAN,
            psi: None,
            jensen_shannon: None,
            drifted: false,
        }
    }
}

impl FeatureReference {
    /// Whether the feature is categorical.
    pub fn is_categorical(&self) -> bool {
        matches!(self.kind, FeatureKind::Categorical { .. })
    }

    /// Compares `current` categories by distance alone: the feature drifts when the
    /// Jensen-Shannon distance of the frequencies reaches `threshold` (Evidently's rule for
    /// large samples, where a test would flag differences too small to matter; Kiln uses it for
    /// text, whose tokens are not independent draws). Categories the training data never had
    /// count in one extra bin. A numeric feature, or numbers for categories, has no such
    /// comparison (test `none`, never drifting); [`crate::report_with`] tests numeric features.
    pub fn compare_distance(&self, current: &Current, threshold: f64) -> FeatureDrift {
        let (
            FeatureKind::Categorical {
                categories,
                proportions,
                ..
            },
            Current::Categories(values),
        ) = (&self.kind, current)
        else {
            return self.not_compared();
        };
        let mut counts = vec![0.0; categories.len() + 1];
        for v in values {
            counts[categories.binary_search(v).unwrap_or(categories.len())] += 1.0;
        }
        let mut expected = proportions.clone();
        expected.push(0.0);
        let distance = jensen_shannon(&expected, &counts);
        FeatureDrift {
            name: self.name.clone(),
            test: "jensen_shannon",
            statistic: distance,
            p_value: f64::NAN,
            psi: None,
            jensen_shannon: Some(distance),
            drifted: distance >= threshold,
        }
    }
}

/// New values of one feature.
#[derive(Clone, Debug)]
pub enum Current {
    /// Of a numeric feature.
    Numbers(Vec<f64>),
    /// Of a categorical feature.
    Categories(Vec<String>),
}

/// How one feature compares with its reference.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureDrift {
    /// The feature.
    pub name: String,
    /// `ks` (numeric), `chi_square` (categorical) or `jensen_shannon` (categorical, by distance).
    pub test: &'static str,
    /// The test's statistic.
    pub statistic: f64,
    /// The test's p-value (NaN, `null` in JSON, for a comparison by distance).
    pub p_value: f64,
    /// Numeric features: the population stability index over the training deciles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<f64>,
    /// Categorical features: the Jensen-Shannon distance of the category frequencies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jensen_shannon: Option<f64>,
    /// The p-value is below the (corrected) significance level.
    pub drifted: bool,
}

/// The share of `sorted` values in each bin between `edges` (a value on an edge counts in the
/// bin above it).
fn proportions(edges: &[f64], sorted: &[f64]) -> Vec<f64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for v in sorted {
        counts[edges.partition_point(|e| e <= v)] += 1;
    }
    let n = sorted.len().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn normal(rng: &mut ChaCha8Rng, mean: f64, std: f64) -> f64 {
        // Box-Muller.
        let (u, v): (f64, f64) = (rng.random(), rng.random());
        mean + std * (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    #[test]
    fn a_shifted_numeric_feature_drifts_and_an_unshifted_one_does_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let train: Vec<f64> = (0..50_000).map(|_| normal(&mut rng, 0.0, 1.0)).collect();
        let r = FeatureReference::numeric("x", train.iter().copied(), 3);
        let FeatureKind::Numeric {
            edges,
            proportions,
            sample,
            count,
        } = &r.kind
        else {
            panic!("numeric")
        };
        assert_eq!((*count, sample.len(), edges.len()), (50_000, SAMPLE, 9));
        assert!(
            proportions.iter().all(|p| (p - 0.1).abs() < 0.01),
            "{proportions:?}"
        );
        let same: Vec<f64> = (0..500).map(|_| normal(&mut rng, 0.0, 1.0)).collect();
        let d = r.compare(&Current::Numbers(same), 0.05);
        assert!(!d.drifted && d.psi.unwrap() < 0.1, "{d:?}");
        let shifted: Vec<f64> = (0..500).map(|_| normal(&mut rng, 0.5, 1.0)).collect();
        let d = r.compare(&Current::Numbers(shifted), 0.05);
        assert!(
            d.drifted && d.p_value < 1e-6 && d.psi.unwrap() > 0.1,
            "{d:?}"
        );
    }

    #[test]
    fn categories_drift_on_changed_frequencies_or_an_unseen_category() {
        let train: Vec<&str> = (0..1000).map(|i| ["a", "b", "c"][i % 3]).collect();
        let r = FeatureReference::categorical("c", train);
        let current = |v: &[&str]| Current::Categories(v.iter().map(|s| s.to_string()).collect());
        let same: Vec<&str> = (0..300).map(|i| ["a", "b", "c"][i % 3]).collect();
        assert!(!r.compare(&current(&same), 0.05).drifted);
        let skewed: Vec<&str> = (0..300)
            .map(|i| if i % 2 == 0 { "a" } else { "b" })
            .collect();
        let d = r.compare(&current(&skewed), 0.05);
        assert!(d.drifted && d.jensen_shannon.unwrap() > 0.1, "{d:?}");
        let unseen = r.compare(&current(&["a", "z"]), 0.05);
        assert!(unseen.drifted && unseen.p_value == 0.0, "{unseen:?}");
    }

    #[test]
    fn a_distance_comparison_drifts_at_its_threshold_only() {
        let train: Vec<&str> = (0..1000).map(|i| ["a", "b", "c", "d"][i % 4]).collect();
        let r = FeatureReference::categorical("token", train);
        let current = |v: Vec<&str>| Current::Categories(v.iter().map(|s| s.to_string()).collect());
        let near: Vec<&str> = (0..1000).map(|i| ["a", "b", "c", "d"][i % 9 % 4]).collect();
        let d = r.compare_distance(&current(near.clone()), 0.1);
        assert!(!d.drifted && d.jensen_shannon.unwrap() < 0.1, "{d:?}");
        // The same small change is significant for the chi-square test on 1,000 draws.
        assert!(r.compare(&current(near), 0.05).drifted);
        let far: Vec<&str> = (0..1000).map(|i| ["a", "e"][i % 2]).collect();
        let d = r.compare_distance(&current(far), 0.1);
        assert!(
            d.drifted && d.test == "jensen_shannon" && d.p_value.is_nan(),
            "{d:?}"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert!(json["p_value"].is_null(), "{json}");
    }
}
