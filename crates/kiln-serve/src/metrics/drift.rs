//! The drift series of `/metrics`, set from each model's monitor when Prometheus scrapes.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{model_label, ModelLabels};
use crate::drift::Gauges;

type Value = Family<ModelLabels, Gauge<f64, AtomicU64>>;

/// The labels of a feature's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabels {
    /// The served model's name.
    pub model: String,
    /// The feature (a column, an image summary such as `mean_intensity`, `token`).
    pub feature: String,
}

type FeatureValue = Family<FeatureLabels, Gauge<f64, AtomicU64>>;

/// Drift, per model and per feature.
#[derive(Default)]
pub struct DriftMetrics {
    available: Value,
    window_samples: Value,
    detected: Value,
    share: Value,
    feature_score: FeatureValue,
    feature_p_value: FeatureValue,
    feature_detected: FeatureValue,
    prediction_score: Value,
    prediction_p_value: Value,
    prediction_detected: Value,
    live_accuracy: Value,
    concept_drift: Value,
    feedback_labels: Family<ModelLabels, Counter>,
}

impl DriftMetrics {
    /// Registers every series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let values: [(&str, &str, &Value); 9] = [
            ("drift_available", "1 when the model's export has a drift reference and drift monitoring is on", &self.available),
            ("drift_window_samples", "Samples (or prompt tokens) in the model's drift window", &self.window_samples),
            ("drift_detected", "1 when the window drifts: at least the share of its features drift, or its predictions do", &self.detected),
            ("drift_share", "The share of the model's features that drift", &self.share),
            ("prediction_drift_score", "The statistic of the predictions' test against the test split's predictions", &self.prediction_score),
            ("prediction_drift_p_value", "The p-value of the predictions' test", &self.prediction_p_value),
            ("prediction_drift_detected", "1 when the predictions drift", &self.prediction_detected),
            ("live_accuracy", "Accuracy over the latest labelled feedback", &self.live_accuracy),
            ("concept_drift_detected", "1 when the feedback's accuracy is significantly below the export's test accuracy", &self.concept_drift),
        ];
        for (name, help, family) in values {
            registry.register(name, help, family.clone());
        }
        let features: [(&str, &str, &FeatureValue); 3] = [
            ("drift_feature_score", "Each feature's test statistic (KS distance, chi-square) or Jensen-Shannon distance (text)", &self.feature_score),
            ("drift_feature_p_value", "Each feature's p-value (NaN for a comparison by distance)", &self.feature_p_value),
            ("drift_feature_detected", "1 when the feature drifts", &self.feature_detected),
        ];
        for (name, help, family) in features {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "feedback_labels",
            "True labels received on /v2/models/{name}/feedback",
            self.feedback_labels.clone(),
        );
    }

    /// Counts `labels` labels of feedback for `model`.
    pub fn feedback(&self, model: &str, labels: usize) {
        self.feedback_labels
            .get_or_create(&model_label(model))
            .inc_by(labels as u64);
    }

    /// Sets `model`'s series from its monitor's `gauges`.
    pub fn set(&self, model: &str, gauges: &Gauges) {
        let label = model_label(model);
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        self.available
            .get_or_create(&label)
            .set(flag(gauges.available));
        if !gauges.available {
            return;
        }
        let _ = self.feedback_labels.get_or_create(&label);
        self.window_samples
            .get_or_create(&label)
            .set(gauges.samples as f64);
        // Every per-model series exists from the model's load (0, or NaN for an accuracy with
        // no feedback yet), so that dashboards and alert rules find it.
        let report = gauges.report.as_ref();
        self.detected
            .get_or_create(&label)
            .set(flag(report.is_some_and(|r| r.dataset_drift)));
        let prediction = report.and_then(|r| r.prediction.as_ref());
        self.prediction_detected
            .get_or_create(&label)
            .set(flag(prediction.is_some_and(|p| p.drifted)));
        let (accuracy, dropped) = gauges.accuracy.unwrap_or((f64::NAN, false));
        self.live_accuracy.get_or_create(&label).set(accuracy);
        self.concept_drift.get_or_create(&label).set(flag(dropped));
        let Some(report) = report else {
            return;
        };
        self.share.get_or_create(&label).set(report.drifted_share);
        for f in &report.features {
            let labels = FeatureLabels {
                model: model.to_string(),
                feature: f.name.clone(),
            };
            self.feature_score.get_or_create(&labels).set(f.statistic);
            self.feature_p_value.get_or_create(&labels).set(f.p_value);
            self.feature_detected
                .get_or_create(&labels)
                .set(flag(f.drifted));
        }
        if let Some(p) = prediction {
            self.prediction_score.get_or_create(&label).set(p.statistic);
            self.prediction_p_value.get_or_create(&label).set(p.p_value);
        }
    }
}
