//! Drift references: what an export keeps of its training data (`drift.json`, size stated in
//! the manifest) so that `kiln drift` and `kiln serve` can tell when inputs or predictions move
//! away from it, and the comparison itself.
//!
//! The reference holds, per input feature ([`View`]), a [`FeatureReference`] of the training
//! split (decile histogram and a seeded sample of 1,000 values, or category frequencies); the
//! exported model's predictions on the test split (class frequencies, or a regression's
//! values); the training labels' class frequencies (the priors, recorded for whoever reads the
//! reference) and the model's test accuracy, which labelled feedback is compared with. A language model keeps the unigram frequencies of
//! its training tokens and the model's surprise (mean next-token loss) on its validation
//! windows.
//!
//! Features are decided by their tests at the level divided among them (Bonferroni), text
//! tokens by the Jensen-Shannon distance ([`TOKEN_DISTANCE`]); see [`kiln_drift::report`].

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use kiln_drift::{report_with, FeatureKind, FeatureReference, Options, Report, Rule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::format::{sha256_hex, Manifest};

mod build;
mod observe;
mod view;

pub use build::build;
pub use observe::{observe_records, observe_text, surprise};
pub use view::{TableColumn, View, MAX_FEATURES, OTHER_TOKENS, TOKEN_CATEGORIES};

/// The reference's file in an export.
pub const DRIFT_FILE: &str = "drift.json";
/// The most bytes a reference may take; stated in the manifest.
pub const SIZE_BOUND: u64 = 4 << 20;
/// Training samples (evenly spaced) the feature references are computed from, at most.
pub const REFERENCE_ROWS: usize = 50_000;
/// The Jensen-Shannon distance of token frequencies at which text drifts.
pub const TOKEN_DISTANCE: f64 = 0.1;

/// What an export keeps of its data for drift detection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reference {
    /// How an input becomes the features.
    pub view: View,
    /// Each feature's training reference, in the view's order.
    pub features: Vec<FeatureReference>,
    /// The exported model's outputs on the test split (classes or values), or a language
    /// model's surprise on its validation windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<FeatureReference>,
    /// A classifier's class names, by class index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// A classifier's training labels' frequencies (the class priors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_priors: Option<FeatureReference>,
    /// A classifier's accuracy on the test split, measured on the exported model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Training samples (or tokens) the features were computed from.
    pub reference_rows: u64,
    /// Test samples (or validation windows) the predictions were computed from.
    pub prediction_rows: u64,
}

impl Reference {
    /// The features' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }

    /// The tokens a window of text needs before its frequencies are compared: enough that the
    /// distance's noise floor at `n` tokens of `k` categories, `sqrt((k - 1) / (8 n))` (the
    /// expected Jensen-Shannon divergence, natural log, of a sample from its own distribution is
    /// about `(k - 1) / (8 n)`), is at most half of [`TOKEN_DISTANCE`]. 0 for samples.
    pub fn min_tokens(&self) -> usize {
        let View::Tokens { kept } = &self.view else {
            return 0;
        };
        let floor = TOKEN_DISTANCE / 2.0;
        (kept.len() as f64 / (8.0 * floor * floor)).ceil() as usize
    }

    /// Checks what a reader relies on: each feature's kind and categories match the view
    /// (categories sorted, as the comparison looks them up), histograms and proportions have
    /// their lengths, the view's positions fit its samples, and the samples are the model's
    /// (`sample_len`, from the manifest; none for text).
    pub fn validate(&self, sample_len: Option<usize>) -> Result<(), String> {
        let names = self.view.names();
        if names.len() != self.features.len() {
            return Err(format!(
                "{} features for a view of {}",
                self.features.len(),
                names.len()
            ));
        }
        match &self.view {
            View::Table { columns } => {
                let mut at = 0;
                for c in columns {
                    if c.offset != at {
                        return Err(format!(
                            "column `{}` at input {} not {at}",
                            c.name, c.offset
                        ));
                    }
                    at += c.categories.as_ref().map_or(1, Vec::len);
                }
            }
            View::Features { names, width } if names.len() > *width => {
                return Err(format!("{} features of rows of {width}", names.len()));
            }
            View::Tokens { kept } if kept.windows(2).any(|w| w[0] >= w[1]) => {
                return Err("the kept tokens are not in ascending order".into());
            }
            _ => {}
        }
        if let (Some(len), false) = (sample_len, matches!(self.view, View::Tokens { .. })) {
            if self.view.sample_len() != len {
                return Err(format!(
                    "samples of {} values, the model takes {len}",
                    self.view.sample_len()
                ));
            }
        }
        let all = (self.features.iter().enumerate())
            .map(|(f, r)| (r, self.view.categories(f)))
            .chain(self.prediction.iter().map(|p| (p, self.classes.clone())));
        for (r, categories) in all {
            check_feature(r, categories.as_deref())
                .map_err(|e| format!("feature `{}`: {e}", r.name))?;
        }
        Ok(())
    }

    /// How each feature is decided: tokens by distance, the rest by their tests.
    fn rule(&self) -> Rule {
        match self.view {
            View::Tokens { .. } => Rule::Distance(TOKEN_DISTANCE),
            _ => Rule::Test,
        }
    }

    /// Compares `observed` with the reference.
    pub fn report(&self, observed: &Observations, options: Options) -> Report {
        let currents: Vec<_> = (0..self.features.len())
            .map(|f| self.view.current(f, observed.features[f].iter()))
            .collect();
        let pairs: Vec<_> = (self.features.iter().zip(&currents))
            .map(|(r, c)| (r, c, self.rule()))
            .collect();
        let prediction = self
            .prediction
            .as_ref()
            .filter(|_| observed.predictions.len() > 1);
        let predicted = prediction.map(|_| match &self.classes {
            Some(classes) => kiln_drift::Current::Categories(
                (observed.predictions.iter())
                    .map(|&c| classes.get(c as usize).cloned().unwrap_or_default())
                    .collect(),
            ),
            None => kiln_drift::Current::Numbers(observed.predictions.iter().copied().collect()),
        });
        let prediction = prediction
            .zip(predicted.as_ref())
            .map(|(r, c)| (r, c, Rule::Test));
        report_with(&pairs, prediction, options)
    }

    /// What the manifest says of the reference written as `bytes`.
    pub fn describe(&self, bytes: &[u8]) -> Value {
        json!({
            "file": DRIFT_FILE,
            "sha256": sha256_hex(bytes),
            "bytes": bytes.len(),
            "bound_bytes": SIZE_BOUND,
            "view": match &self.view {
                View::Image { .. } => "image summaries",
                View::Table { .. } => "table columns",
                View::Features { .. } => "features",
                View::Tokens { .. } => "token unigram",
            },
            "features": self.names(),
            "prediction": self.prediction.as_ref().map(|p| &p.name),
            "reference_rows": self.reference_rows,
            "prediction_rows": self.prediction_rows,
            "sample_per_feature": kiln_drift::reference::SAMPLE,
        })
    }

    /// The reference as written to [`DRIFT_FILE`], checked against [`SIZE_BOUND`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(self)?;
        ensure!(
            bytes.len() as u64 <= SIZE_BOUND,
            "the drift reference takes {} bytes, over its bound of {SIZE_BOUND}",
            bytes.len()
        );
        Ok(bytes)
    }
}

/// Why an export whose manifest names no drift reference has none (it predates them), and what
/// to do.
pub fn no_reference(manifest: &Manifest) -> String {
    format!(
        "the export was written by Kiln {} (manifest version {}), before exports kept a drift reference; export the run again with this Kiln to monitor drift",
        manifest.kiln_version, manifest.format_version
    )
}

/// The drift reference of the export in `dir`: `Ok(None)` for an export written before Kiln
/// kept one (drift is then unavailable), an error when the file is missing or damaged.
pub fn read_reference(dir: &Path, manifest: &Manifest) -> Result<Option<Reference>> {
    let Some(entry) = &manifest.drift else {
        return Ok(None);
    };
    let file = entry["file"].as_str().unwrap_or(DRIFT_FILE);
    ensure!(
        Path::new(file).file_name().is_some_and(|n| n == file),
        "{}: the manifest's drift file `{file}` is not a file name in the export; export the model again",
        dir.display()
    );
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}, the export's drift reference; export the model again",
            path.display()
        )
    })?;
    let expected = entry["sha256"].as_str().with_context(|| {
        format!(
            "{}: the manifest's drift entry has no sha256; export the model again",
            dir.display()
        )
    })?;
    let got = sha256_hex(&bytes);
    ensure!(
        got == expected,
        "{}: sha256 {got} does not match the manifest's {expected}; the drift reference is damaged, export the model again",
        path.display()
    );
    let reference: Reference = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: the drift reference is damaged", path.display()))?;
    let sample_len = (manifest.input["kind"] == "features")
        .then(|| manifest.input["shape"].as_array())
        .flatten()
        .map(|dims| dims.iter().filter_map(Value::as_u64).product::<u64>() as usize);
    reference.validate(sample_len).map_err(|e| {
        anyhow::anyhow!(
            "{}: the drift reference is damaged ({e}); export the model again",
            path.display()
        )
    })?;
    Ok(Some(reference))
}

/// Checks one reference: a numeric one's bins and sample, a categorical one's categories (the
/// view's, or the class names, sorted by the comparison) and proportions.
fn check_feature(r: &FeatureReference, categories: Option<&[String]>) -> Result<(), String> {
    match (&r.kind, categories) {
        (
            FeatureKind::Numeric {
                edges,
                proportions,
                sample,
                ..
            },
            None,
        ) => {
            if proportions.len() != edges.len() + 1 || sample.is_empty() {
                return Err(format!(
                    "{} bins for {} edges, {} sampled values",
                    proportions.len(),
                    edges.len(),
                    sample.len()
                ));
            }
        }
        (
            FeatureKind::Categorical {
                categories: kept,
                proportions,
                ..
            },
            Some(names),
        ) => {
            let mut sorted = names.to_vec();
            sorted.sort();
            sorted.dedup();
            if kept != &sorted || proportions.len() != kept.len() {
                return Err("its categories are not the model's, in order".into());
            }
        }
        (_, None) => return Err("categories where the view has numbers".into()),
        (_, Some(_)) => return Err("numbers where the view has categories".into()),
    }
    Ok(())
}

/// The most recent values of each feature and of the predictions (all of them offline, a
/// sliding window in `kiln serve`).
#[derive(Clone, Debug)]
pub struct Observations {
    capacity: usize,
    /// Each feature's values (numbers, or category indices), oldest first.
    pub features: Vec<VecDeque<f64>>,
    /// The predictions (class indices, values or surprise), oldest first.
    pub predictions: VecDeque<f64>,
    /// Samples (or tokens) observed since the start, the window's or not.
    pub seen: u64,
}

impl Observations {
    /// Room for the last `capacity` values of each of the reference's features.
    pub fn new(reference: &Reference, capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            features: vec![VecDeque::new(); reference.features.len()],
            predictions: VecDeque::new(),
            seen: 0,
        }
    }

    /// The window's size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Values in the window (of the first feature).
    pub fn len(&self) -> usize {
        self.features
            .first()
            .map_or(self.predictions.len(), VecDeque::len)
    }

    /// Whether nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one sample's features (or one token), dropping the oldest beyond the capacity.
    pub fn push(&mut self, features: &[f64]) {
        for (window, &v) in self.features.iter_mut().zip(features) {
            if window.len() == self.capacity {
                window.pop_front();
            }
            window.push_back(v);
        }
        self.seen += 1;
    }

    /// Adds one prediction.
    pub fn push_prediction(&mut self, value: f64) {
        if self.predictions.len() == self.capacity {
            self.predictions.pop_front();
        }
        self.predictions.push_back(value);
    }

    /// Empties the window.
    pub fn clear(&mut self) {
        self.features.iter_mut().for_each(VecDeque::clear);
        self.predictions.clear();
    }
}
