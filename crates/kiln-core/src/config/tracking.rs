//! `[tracking]`: where a run is reported besides its own `metrics.jsonl`. None of these keys
//! changes what a run computes: they stay out of the config hash and may change on resume.

use serde::{Deserialize, Serialize};

/// `[tracking]`: TensorBoard, MLflow and the system metrics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrackingSection {
    /// `tracking.tensorboard` (default false): `true` writes TensorBoard event files to the
    /// run's `tb/`; a directory (relative to where `kiln` runs) writes them to
    /// `<directory>/<run.name>/`, so that runs sharing it appear side by side.
    #[serde(default)]
    pub tensorboard: Switch,
    /// `tracking.mlflow` (default false): `true` reports to the server of `MLFLOW_TRACKING_URI`;
    /// a string is the tracking URI itself (`http://host:5000`, `https://...`).
    #[serde(default)]
    pub mlflow: Switch,
    /// `tracking.experiment` (default: `MLFLOW_EXPERIMENT_NAME`, else `Default`): the MLflow
    /// experiment the run goes in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// `tracking.log_weights` (default false): at the end, upload the newest checkpoint's
    /// `model.safetensors` to MLflow as the artifact `weights/model.safetensors`.
    #[serde(default)]
    pub log_weights: bool,
    /// `tracking.exit_timeout_secs` (default 10, at least 0): at the end of a run, how long to
    /// wait for trackers still sending; what is left is reported, and `kiln sync` sends it.
    #[serde(default = "default_exit_timeout_secs")]
    pub exit_timeout_secs: f64,
    /// `tracking.system_metrics` (default true): log the process's memory (RSS) and CPU use, and
    /// GPU memory on a GPU, with each training log window (`system/...` in `metrics.jsonl`).
    #[serde(default = "default_true")]
    pub system_metrics: bool,
}

impl Default for TrackingSection {
    fn default() -> Self {
        TrackingSection {
            tensorboard: Switch::default(),
            mlflow: Switch::default(),
            experiment: None,
            log_weights: false,
            exit_timeout_secs: default_exit_timeout_secs(),
            system_metrics: true,
        }
    }
}

impl TrackingSection {
    /// Whether every key has its default (the section is then left out of `config.toml`).
    pub fn is_default(&self) -> bool {
        *self == TrackingSection::default()
    }
}

/// A tracker's switch: off, on at its default place, or on at a given place.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Switch {
    /// `false` (off) or `true` (on, default place).
    Flag(bool),
    /// On, at this place (a directory or a URI).
    At(String),
}

impl Default for Switch {
    fn default() -> Self {
        Switch::Flag(false)
    }
}

impl Switch {
    /// Whether the tracker is on.
    pub fn is_on(&self) -> bool {
        !matches!(self, Switch::Flag(false))
    }

    /// The place given, if any.
    pub fn place(&self) -> Option<&str> {
        match self {
            Switch::At(s) => Some(s),
            Switch::Flag(_) => None,
        }
    }
}

fn default_exit_timeout_secs() -> f64 {
    10.0
}

fn default_true() -> bool {
    true
}
