//! A data set's drift: every feature compared with its reference, the predictions with theirs,
//! and the verdict.
//!
//! Defaults (configurable through [`Options`]): significance level 0.05 for the whole report,
//! divided among its tests (Bonferroni: each feature and the predictions get `0.05 / tests`), so
//! the chance of any false alarm on data from the training distribution stays at most 5%; the
//! data set drifts when at least half of its features drift (Evidently's default share, 0.5) or
//! the predictions drift.

use serde::Serialize;

use crate::reference::{Current, FeatureDrift, FeatureReference};

/// How drift is decided.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Options {
    /// The significance level of the whole report (default 0.05).
    pub alpha: f64,
    /// The share of drifting features at which the data set drifts (default 0.5).
    pub share: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            share: 0.5,
        }
    }
}

/// The drift of a data set.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Each feature's comparison.
    pub features: Vec<FeatureDrift>,
    /// The predictions' comparison, when the reference has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<FeatureDrift>,
    /// How many features drift.
    pub drifted_features: usize,
    /// Their share of all features.
    pub drifted_share: f64,
    /// The options decided with.
    pub options: Options,
    /// The level each test was held to (`alpha / tests`).
    pub corrected_alpha: f64,
    /// The verdict: enough features drift, or the predictions do.
    pub dataset_drift: bool,
}

/// How a feature's drift is decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Its test, at the level divided among the tests (Bonferroni).
    Test,
    /// Its Jensen-Shannon distance reaching the threshold
    /// ([`FeatureReference::compare_distance`]); not a test, so it takes no share of the level.
    Distance(f64),
}

/// Compares `current` values of each feature (in the order of `features`) and, optionally, of
/// the predictions with their references, each by its test.
pub fn report(
    features: &[(&FeatureReference, &Current)],
    prediction: Option<(&FeatureReference, &Current)>,
    options: Options,
) -> Report {
    let features: Vec<_> = features.iter().map(|&(r, c)| (r, c, Rule::Test)).collect();
    report_with(
        &features,
        prediction.map(|(r, c)| (r, c, Rule::Test)),
        options,
    )
}

/// As [`report`], each feature and the predictions decided by their own [`Rule`].
pub fn report_with(
    features: &[(&FeatureReference, &Current, Rule)],
    prediction: Option<(&FeatureReference, &Current, Rule)>,
    options: Options,
) -> Report {
    // A distance rule applies to categories; a numeric feature is tested whatever its rule.
    let tested = |(r, _, rule): &&(&FeatureReference, &Current, Rule)| {
        *rule == Rule::Test || !r.is_categorical()
    };
    let tests = (features.iter().chain(prediction.as_ref()))
        .filter(tested)
        .count();
    let corrected_alpha = options.alpha / tests.max(1) as f64;
    let compare = |(r, c, rule): &(&FeatureReference, &Current, Rule)| match rule {
        Rule::Distance(threshold) if r.is_categorical() => r.compare_distance(c, *threshold),
        _ => r.compare(c, corrected_alpha),
    };
    let features: Vec<FeatureDrift> = features.iter().map(compare).collect();
    let prediction = prediction.as_ref().map(compare);
    let drifted_features = features.iter().filter(|f| f.drifted).count();
    let drifted_share = drifted_features as f64 / features.len().max(1) as f64;
    let dataset_drift = (!features.is_empty() && drifted_share >= options.share)
        || prediction.as_ref().is_some_and(|p| p.drifted);
    Report {
        features,
        prediction,
        drifted_features,
        drifted_share,
        options,
        corrected_alpha,
        dataset_drift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_follows_the_share_of_drifting_features_and_the_predictions() {
        let uniform = |shift: f64, n: usize| -> Vec<f64> {
            (0..n)
                .map(|i| shift + (i as f64 + 0.5) / n as f64)
                .collect()
        };
        let refs: Vec<FeatureReference> = (0..4)
            .map(|k| FeatureReference::numeric(&format!("f{k}"), uniform(0.0, 5000), k))
            .collect();
        let same = Current::Numbers(uniform(0.0, 400));
        let moved = Current::Numbers(uniform(0.5, 400));
        let pairs = |moved_count: usize| -> Vec<(&FeatureReference, &Current)> {
            refs.iter()
                .enumerate()
                .map(|(k, r)| (r, if k < moved_count { &moved } else { &same }))
                .collect()
        };
        let r = report(&pairs(0), None, Options::default());
        assert!(!r.dataset_drift && r.drifted_features == 0);
        assert_eq!(r.corrected_alpha, 0.05 / 4.0);
        let r = report(&pairs(1), None, Options::default());
        assert!(!r.dataset_drift && r.drifted_features == 1 && r.features[0].drifted);
        let r = report(&pairs(2), None, Options::default());
        assert!(r.dataset_drift && r.drifted_share == 0.5);
        let classes = FeatureReference::categorical("prediction", ["a", "b"].repeat(500));
        let skewed = Current::Categories(vec!["a".to_string(); 300]);
        let r = report(&pairs(0), Some((&classes, &skewed)), Options::default());
        assert!(r.dataset_drift && r.prediction.unwrap().drifted && r.corrected_alpha == 0.01);
    }
}
