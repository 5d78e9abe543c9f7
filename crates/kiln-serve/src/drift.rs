//! Live drift: each served model keeps a sliding window of its latest inputs' features and
//! predictions, compares it with the export's drift reference when asked (`/metrics`,
//! `/v2/models/{name}/drift`), and measures its accuracy on labelled feedback.
//!
//! The worker adds each batch's features and predictions under one short lock; the comparison
//! runs on the HTTP side, at most once per change of the window. Exports written before drift
//! references serve with drift reported as unavailable.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kiln_drift::{two_proportion_less, Options, Report};
use kiln_export::drift::{Observations, Reference};
use kiln_export::predict::{argmax, Outputs};
use serde_json::{json, Value};

/// How a server watches for drift.
#[derive(Clone, Copy, Debug)]
pub struct DriftOptions {
    /// Samples (or prompt tokens) in each model's window; 0 turns drift off.
    pub window: usize,
    /// Samples the window needs before it is compared.
    pub min_samples: usize,
    /// The tests' level and the share of drifting features.
    pub options: Options,
}

impl Default for DriftOptions {
    fn default() -> Self {
        Self {
            window: 1000,
            min_samples: 100,
            options: Options::default(),
        }
    }
}

/// Request ids whose predicted classes are kept for feedback.
const KEPT_REQUESTS: usize = 10_000;
/// Predicted classes kept for feedback over all those requests.
const KEPT_PREDICTIONS: usize = 1_000_000;

/// One served model's drift monitor.
#[derive(Debug)]
pub struct Monitor {
    options: DriftOptions,
    /// The export's reference, or why drift is unavailable.
    reference: Result<Reference, String>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window: Option<Observations>,
    /// The report of the window as it was at `reported_at` samples seen.
    report: Option<(u64, Report)>,
    /// Predicted classes of recent requests with an id, oldest first.
    predicted: HashMap<String, Vec<usize>>,
    order: VecDeque<String>,
    /// Classes in `predicted`.
    kept: usize,
    /// Whether each of the latest labelled predictions was right.
    feedback: VecDeque<bool>,
    labels_total: u64,
}

/// Why feedback was refused.
#[derive(Debug, PartialEq)]
pub enum FeedbackError {
    /// No prediction is kept for the request id (404).
    Unknown(String),
    /// The feedback does not fit the model or the request (400).
    Invalid(String),
}

/// What `/metrics` shows of a monitor.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Drift can be measured (the export has a reference and drift is on).
    pub available: bool,
    /// Samples in the window.
    pub samples: usize,
    /// The window's report, once it holds enough samples.
    pub report: Option<Report>,
    /// Accuracy over the labelled window, and whether it fell significantly.
    pub accuracy: Option<(f64, bool)>,
    /// Labels received.
    pub labels_total: u64,
}

impl Monitor {
    /// A monitor of `reference` (`Err`: why drift is unavailable).
    pub fn new(reference: Result<Reference, String>, options: DriftOptions) -> Self {
        let reference = match (reference, options.window) {
            (Ok(_), 0) => Err("drift monitoring is off (--drift-window 0)".to_string()),
            (r, _) => r,
        };
        // Text: a window of prompt tokens large enough for its frequencies to be compared.
        let mut options = options;
        if let Ok(r) = &reference {
            let min_tokens = r.min_tokens();
            options.min_samples = options.min_samples.max(min_tokens);
            options.window = options.window.max(2 * min_tokens);
        }
        let window = reference
            .as_ref()
            .ok()
            .map(|r| Observations::new(r, options.window));
        Self {
            options,
            reference,
            state: Mutex::new(State {
                window,
                report: None,
                predicted: HashMap::new(),
                order: VecDeque::new(),
                kept: 0,
                feedback: VecDeque::new(),
                labels_total: 0,
            }),
        }
    }

    /// Whether the worker should observe anything.
    pub fn enabled(&self) -> bool {
        self.reference.is_ok()
    }

    /// The features of `rows` samples of `x` (values as the loader reads them), for
    /// [`Monitor::observe`] after the forward pass.
    pub fn features(&self, x: &[f32], rows: usize) -> Vec<f64> {
        let Ok(reference) = &self.reference else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(rows * reference.features.len());
        if rows > 0 && x.len() == rows * reference.view.sample_len() {
            for sample in x.chunks_exact(x.len() / rows) {
                reference.view.extract(sample, &mut out);
            }
        }
        out
    }

    /// Adds a batch's `features` (from [`Monitor::features`]) and its outputs to the window.
    pub fn observe(&self, features: &[f64], outputs: &Outputs) {
        let Ok(reference) = &self.reference else {
            return;
        };
        let width = reference.features.len().max(1);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(window) = state.window.as_mut() else {
            return;
        };
        features.chunks_exact(width).for_each(|f| window.push(f));
        match outputs {
            Outputs::Classes { probabilities, .. } => {
                let classes = reference.classes.as_ref().map_or(1, Vec::len).max(1);
                for p in probabilities.chunks_exact(classes) {
                    window.push_prediction(argmax(p) as f64);
                }
            }
            Outputs::Values(values) => values
                .iter()
                .for_each(|&v| window.push_prediction(f64::from(v))),
        }
    }

    /// Adds a prompt's token ids to the window.
    pub fn observe_tokens(&self, ids: &[u32]) {
        let Ok(reference) = &self.reference else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = state.window.as_mut() {
            ids.iter()
                .for_each(|&id| window.push(&[reference.view.token(id)]));
        }
    }

    /// Keeps the predicted classes of the request `id` for its feedback.
    pub fn remember(&self, id: &str, outputs: &Outputs) {
        let (Ok(_), Outputs::Classes { probabilities, .. }) = (&self.reference, outputs) else {
            return;
        };
        let Some(classes) = self.classes().filter(|c| !c.is_empty()) else {
            return;
        };
        let predicted: Vec<usize> = probabilities
            .chunks_exact(classes.len())
            .map(argmax)
            .collect();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.kept += predicted.len();
        match state.predicted.insert(id.to_string(), predicted) {
            Some(old) => state.kept -= old.len(),
            None => state.order.push_back(id.to_string()),
        }
        while state.order.len() > KEPT_REQUESTS || state.kept > KEPT_PREDICTIONS {
            let Some(old) = state.order.pop_front() else {
                break;
            };
            if let Some(gone) = state.predicted.remove(&old) {
                state.kept -= gone.len();
            }
        }
    }

    /// The class names of a classifier with a reference.
    pub fn classes(&self) -> Option<&[String]> {
        self.reference.as_ref().ok()?.classes.as_deref()
    }

    /// Compares the true `labels` (class indices) of request `id` with what was predicted, once
    /// per id; returns `(labels, correct)`, or why the feedback cannot be used.
    pub fn feedback(&self, id: &str, labels: &[usize]) -> Result<(usize, usize), FeedbackError> {
        if let Err(why) = &self.reference {
            return Err(FeedbackError::Invalid(format!(
                "drift is unavailable for this model: {why}"
            )));
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(predicted) = state.predicted.get(id) else {
            return Err(FeedbackError::Unknown(format!(
                "no prediction is kept for request id `{id}`: send the id with the infer request (\"id\" in its body); the server keeps the last {KEPT_REQUESTS} ids, and takes each one's feedback once"
            )));
        };
        if predicted.len() != labels.len() {
            return Err(FeedbackError::Invalid(format!(
                "request `{id}` predicted {} samples, the feedback has {} labels",
                predicted.len(),
                labels.len()
            )));
        }
        // Each id's feedback counts once: a retried post is not counted twice.
        let predicted = state.predicted.remove(id).unwrap_or_default();
        state.kept -= predicted.len();
        state.order.retain(|kept| kept != id);
        let mut correct = 0;
        for (p, l) in predicted.iter().zip(labels) {
            let right = p == l;
            correct += usize::from(right);
            if state.feedback.len() == self.options.window.max(1) {
                state.feedback.pop_front();
            }
            state.feedback.push_back(right);
        }
        state.labels_total += labels.len() as u64;
        Ok((labels.len(), correct))
    }

    /// The window's report (recomputed only when new samples arrived) and the feedback's
    /// accuracy.
    pub fn gauges(&self) -> Gauges {
        let Ok(reference) = &self.reference else {
            return Gauges::default();
        };
        let lock = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = lock();
        let (samples, seen) = state.window.as_ref().map_or((0, 0), |w| (w.len(), w.seen));
        let fresh = state.report.as_ref().is_some_and(|(at, _)| *at == seen);
        if samples >= self.options.min_samples.max(2) && !fresh {
            // Compared on a copy, so that the worker is not kept waiting meanwhile.
            let window = state.window.clone().expect("a window with samples");
            drop(state);
            let report = reference.report(&window, self.options.options);
            state = lock();
            if state.report.as_ref().is_none_or(|(at, _)| *at < seen) {
                state.report = Some((seen, report));
            }
        }
        let report = state
            .report
            .as_ref()
            .filter(|_| samples >= self.options.min_samples.max(2))
            .map(|(_, r)| r.clone());
        let accuracy = self.accuracy(reference, &state);
        Gauges {
            available: true,
            samples,
            report,
            accuracy,
            labels_total: state.labels_total,
        }
    }

    /// Live accuracy over the labelled window and whether it is significantly below the
    /// export's test accuracy (the one-sided two-proportion test at the report's level, the test
    /// split counted as the sample it is).
    fn accuracy(&self, reference: &Reference, state: &State) -> Option<(f64, bool)> {
        let n = state.feedback.len();
        if n == 0 {
            return None;
        }
        let correct = state.feedback.iter().filter(|&&c| c).count();
        let accuracy = correct as f64 / n as f64;
        let dropped = n >= self.options.min_samples
            && reference.accuracy.is_some_and(|expected| {
                let tested = reference.prediction_rows;
                let right = (expected * tested as f64).round() as u64;
                two_proportion_less(right, tested, correct as u64, n as u64)
                    < self.options.options.alpha
            });
        Some((accuracy, dropped))
    }

    /// `GET /v2/models/{name}/drift`.
    pub fn json(&self, model: &str) -> Value {
        let gauges = self.gauges();
        let reference = match &self.reference {
            Err(why) => {
                return json!({
                    "model": model, "status": "unavailable", "reason": why,
                });
            }
            Ok(r) => r,
        };
        let status = if gauges.report.is_some() {
            "ready"
        } else {
            "collecting"
        };
        let (accuracy, concept_drift) = gauges.accuracy.unzip();
        json!({
            "model": model,
            "status": status,
            "window": {
                "size": self.options.window,
                "samples": gauges.samples,
                "min_samples": self.options.min_samples,
            },
            "report": gauges.report,
            "feedback": {
                "labels_total": gauges.labels_total,
                "window_labels": self.state.lock().unwrap_or_else(|e| e.into_inner()).feedback.len(),
                "live_accuracy": accuracy,
                "expected_accuracy": reference.accuracy,
                "concept_drift": concept_drift.unwrap_or(false),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_drift::FeatureReference;
    use kiln_export::drift::View;

    /// A classifier of one feature, uniform on [0, 1), that is right 90% of the time.
    fn reference() -> Reference {
        let values = (0..5000).map(|i| f64::from(i) / 5000.0);
        Reference {
            view: View::Features {
                names: vec!["feature_0".into()],
                width: 1,
            },
            features: vec![FeatureReference::numeric("feature_0", values, 1)],
            prediction: None,
            classes: Some(vec!["a".into(), "b".into()]),
            class_priors: None,
            accuracy: Some(0.9),
            reference_rows: 5000,
            prediction_rows: 1000,
        }
    }

    fn classes(rows: usize) -> Outputs {
        Outputs::Classes {
            logits: vec![0.0; 2 * rows],
            probabilities: [0.9, 0.1].repeat(rows),
        }
    }

    #[test]
    fn the_window_slides_and_is_compared_once_it_holds_enough() {
        let options = DriftOptions {
            window: 200,
            min_samples: 50,
            ..DriftOptions::default()
        };
        let m = Monitor::new(Ok(reference()), options);
        let same: Vec<f32> = (0..40).map(|i| i as f32 / 40.0).collect();
        m.observe(&m.features(&same, 40), &classes(40));
        assert!(m.gauges().report.is_none() && m.json("m")["status"] == "collecting");
        for _ in 0..4 {
            m.observe(&m.features(&same, 40), &classes(40));
        }
        let g = m.gauges();
        assert_eq!(g.samples, 200);
        assert!(!g.report.unwrap().features[0].drifted);
        let moved: Vec<f32> = same.iter().map(|v| v + 0.5).collect();
        for _ in 0..5 {
            m.observe(&m.features(&moved, 40), &classes(40));
        }
        let g = m.gauges();
        assert_eq!(g.samples, 200, "the window keeps its size");
        assert!(g.report.unwrap().features[0].drifted);
    }

    #[test]
    fn feedback_measures_accuracy_against_remembered_predictions() {
        let options = DriftOptions {
            min_samples: 20,
            ..DriftOptions::default()
        };
        let m = Monitor::new(Ok(reference()), options);
        m.remember("r1", &classes(30));
        let FeedbackError::Invalid(e) = m.feedback("r1", &[0]).unwrap_err() else {
            panic!("a count mismatch is invalid")
        };
        assert!(e.contains("30 samples"), "{e}");
        assert_eq!(m.feedback("r1", &[0; 30]), Ok((30, 30)));
        assert_eq!(m.gauges().accuracy, Some((1.0, false)));
        // Each id once: a retried post is refused, not counted again.
        assert!(matches!(
            m.feedback("r1", &[0; 30]),
            Err(FeedbackError::Unknown(_))
        ));
        m.remember("r2", &classes(30));
        assert_eq!(m.feedback("r2", &[1; 30]), Ok((30, 0)));
        let (accuracy, dropped) = m.gauges().accuracy.unwrap();
        assert!(accuracy == 0.5 && dropped);
        let FeedbackError::Unknown(e) = m.feedback("r3", &[0]).unwrap_err() else {
            panic!("an unknown id")
        };
        assert!(e.contains("send the id"), "{e}");
        let off = Monitor::new(
            Ok(reference()),
            DriftOptions {
                window: 0,
                ..DriftOptions::default()
            },
        );
        assert!(!off.enabled());
        assert_eq!(off.json("m")["status"], "unavailable");
    }
}
