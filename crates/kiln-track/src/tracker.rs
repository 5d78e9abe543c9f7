//! The interface every tracker implements, and what it learns of a run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::record::Record;

/// A place runs are reported to (TensorBoard's event files, an MLflow server). A tracker runs on
/// the tracking thread ([`crate::Tracking`]), never on the training thread, and receives the
/// run's records in order: [`Tracker::start`] once, [`Tracker::record`] for each line of
/// `metrics.jsonl`, [`Tracker::end`] once. `kiln sync` replays a finished run the same way.
pub trait Tracker: Send {
    /// Its name in reports (`tensorboard`, `mlflow`).
    fn name(&self) -> &'static str;
    /// The run begins (or resumes: [`RunInfo::resumed_from`]).
    fn start(&mut self, run: &RunInfo) -> Result<()>;
    /// One record of the run.
    fn record(&mut self, record: &Record) -> Result<()>;
    /// The run ends with `status`; whatever the tracker buffers is sent now.
    fn end(&mut self, status: RunStatus) -> Result<()>;
}

/// What a tracker learns of a run when it starts.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// The run's name (`run.name`).
    pub name: String,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The resolved config, as `config.toml` holds it.
    pub config_toml: String,
    /// The config flattened to dotted keys (`optimizer.lr`), without `[tracking]`: the run's
    /// hyperparameters.
    pub params: BTreeMap<String, Param>,
    /// Facts about the run that are not hyperparameters: `kiln.version`, `git.commit`,
    /// `backend`, `devices`, `workers`.
    pub tags: BTreeMap<String, String>,
    /// The step a resumed run continues after; `None` for a new run.
    pub resumed_from: Option<u64>,
    /// Seconds since the Unix epoch at which this attempt started.
    pub start_time: f64,
    /// Runs that differ only in their seed share a group (a sweep's repeats).
    pub group: Option<String>,
}

/// A hyperparameter's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// A number.
    Number(f64),
    /// A string; lists are their TOML text (`[256, 256]`).
    Text(String),
    /// A flag.
    Bool(bool),
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Param::Number(n) => write!(f, "{n}"),
            Param::Text(s) => f.write_str(s),
            Param::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The config as hyperparameters: every leaf of `table` under its dotted key, `[tracking]` left
/// out (where a run is reported is not a hyperparameter).
pub fn params_of(table: &toml::Table) -> BTreeMap<String, Param> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, Param>) {
        for (key, value) in table {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let param = match value {
                toml::Value::Table(t) => {
                    walk(&key, t, out);
                    continue;
                }
                toml::Value::Integer(i) => Param::Number(*i as f64),
                toml::Value::Float(x) => Param::Number(*x),
                toml::Value::Boolean(b) => Param::Bool(*b),
                toml::Value::String(s) => Param::Text(s.clone()),
                other => Param::Text(other.to_string()),
            };
            out.insert(key, param);
        }
    }
    let mut out = BTreeMap::new();
    let mut table = table.clone();
    table.remove("tracking");
    walk("", &table, &mut out);
    out
}

/// How a run (this attempt of it) ended, as trackers record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// Every step ran.
    Finished,
    /// An error stopped it.
    Failed,
    /// A signal (Ctrl-C, SIGTERM, a cluster's time limit) stopped it; it can resume.
    Killed,
}

impl RunStatus {
    /// `FINISHED`, `FAILED` or `KILLED`: MLflow's names.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_flattens_to_dotted_keys_without_tracking() {
        let table: toml::Table = toml::from_str(
            "[run]\nname = \"a\"\nseed = 3\n[model]\nhidden = [256, 128]\n[optimizer]\nlr = 0.001\n\
             [train]\namp = false\n[tracking]\ntensorboard = true\n",
        )
        .unwrap();
        let params = params_of(&table);
        assert_eq!(
            params.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "model.hidden",
                "optimizer.lr",
                "run.name",
                "run.seed",
                "train.amp"
            ]
        );
        assert_eq!(params["model.hidden"], Param::Text("[256, 128]".into()));
        assert_eq!(params["run.seed"], Param::Number(3.0));
        assert_eq!(params["optimizer.lr"].to_string(), "0.001");
        assert_eq!(params["train.amp"], Param::Bool(false));
    }
}
