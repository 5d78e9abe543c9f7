//! [`Tracked`]: the trackers a run's `[tracking]` section turns on (kiln-track), on their own
//! thread. [`crate::sinks::Jsonl`] hands them each line it appends to `metrics.jsonl`, exactly as
//! written, and at the end the run reports what did not reach them; [`sync`] sends a run's
//! `metrics.jsonl` later (`kiln sync`), the same lines giving the same points.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_core::layout::{CONFIG_FILE, METRICS_FILE, RUN_INFO_FILE, TENSORBOARD_DIR};
use kiln_core::Config;
use kiln_track::mlflow::{Mlflow, Server, State};
use kiln_track::{params_of, Record, RunInfo, RunStatus, TensorBoard, Tracker, Tracking};
use serde::Serialize;
use serde_json::Value;

use crate::events::{RunEnd, RunStart, Status};

/// Where the TensorBoard events of a run go: `tb/` in the run directory, or
/// `<tracking.tensorboard>/<run.name>/`.
pub fn tensorboard_dir(config: &Config, run_dir: &Path) -> Option<PathBuf> {
    let switch = &config.tracking.tensorboard;
    switch.is_on().then(|| match switch.place() {
        Some(dir) => PathBuf::from(dir).join(&config.run.name),
        None => run_dir.join(TENSORBOARD_DIR),
    })
}

/// The MLflow server of `config`, if MLflow is on; an error when it is on but no server is
/// named (`tracking.mlflow = true` without `MLFLOW_TRACKING_URI`) or the URI is not a server's.
pub fn mlflow_server(config: &Config) -> Result<Option<Server>> {
    let t = &config.tracking;
    if !t.mlflow.is_on() {
        return Ok(None);
    }
    Server::from_env(t.mlflow.place(), t.experiment.as_deref())
        .map(Some)
        .context("tracking.mlflow")
}

/// What trackers learn of the run in `run_dir`: its config and hyperparameters, and as tags the
/// facts of its `run.json` (Kiln's version, backend, devices, workers, git commit).
pub fn run_info(config: &Config, run_dir: &Path, resumed_from: Option<u64>) -> RunInfo {
    let table = toml::Table::try_from(config).expect("a Config always serializes to a TOML table");
    let facts: Value = std::fs::read_to_string(run_dir.join(RUN_INFO_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let devices = facts["devices"].as_array().map(|d| {
        d.iter()
            .map(|w| {
                format!(
                    "{}:{}",
                    w["host"].as_str().unwrap_or(""),
                    w["device"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    let tags = [
        ("kiln.version", text(&facts["kiln_version"])),
        ("backend", text(&facts["backend"])),
        ("device", text(&facts["device"])),
        ("workers", text(&facts["world_size"])),
        ("devices", devices),
        ("git.commit", text(&facts["git_commit"])),
    ]
    .into_iter()
    .chain([(
        "parent_run_id",
        std::env::var("KILN_MLFLOW_PARENT_RUN_ID")
            .ok()
            .filter(|p| !p.is_empty()),
    )])
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect();
    RunInfo {
        name: config.run.name.clone(),
        run_dir: run_dir.to_path_buf(),
        config_toml: config.to_toml(),
        params: params_of(&table),
        tags,
        resumed_from,
        start_time: kiln_track::record::now(),
        // `kiln sweep` names the point a trial runs, which its repeats (seeds) share.
        group: std::env::var("KILN_TRACKING_GROUP")
            .ok()
            .filter(|g| !g.is_empty()),
    }
}

/// The trackers of `[tracking]`, before and while the run goes.
pub struct Tracked {
    trackers: Option<Vec<Box<dyn Tracker>>>,
    tracking: Option<Tracking>,
    config: Config,
    exit_timeout: Duration,
}

impl Tracked {
    /// The trackers of `config` for the run in `run_dir`, or `None` when none is on; an error for
    /// a tracker that is on but cannot be (no MLflow server named).
    pub fn new(config: &Config, run_dir: &Path) -> Result<Option<Tracked>> {
        let mut trackers: Vec<Box<dyn Tracker>> = Vec::new();
        if let Some(dir) = tensorboard_dir(config, run_dir) {
            trackers.push(Box::new(TensorBoard::new(dir)));
        }
        if let Some(server) = mlflow_server(config)? {
            let mlflow = Mlflow::new(server, run_dir.to_path_buf());
            trackers.push(Box::new(mlflow.log_weights(config.tracking.log_weights)));
        }
        Ok((!trackers.is_empty()).then(|| Tracked {
            trackers: Some(trackers),
            tracking: None,
            config: config.clone(),
            exit_timeout: Duration::from_secs_f64(config.tracking.exit_timeout_secs),
        }))
    }

    /// Starts the trackers on their own thread.
    pub fn start(&mut self, run: &RunStart) {
        if let Some(trackers) = self.trackers.take() {
            let from = run.resumed_from.map(|s| s as u64);
            let info = run_info(&self.config, run.run_dir, from);
            self.tracking = Some(Tracking::spawn(trackers, info, self.exit_timeout));
        }
    }

    /// Hands over one line of `metrics.jsonl`; never blocks.
    pub fn line(&mut self, fields: &serde_json::Map<String, Value>) {
        if let Some(tracking) = self.tracking.as_mut() {
            tracking.record(Record::new(fields.clone()));
        }
    }

    /// Ends the trackers' run and waits for them at most `tracking.exit_timeout_secs`; what did
    /// not reach them is a warning naming `kiln sync`.
    pub fn end(&mut self, end: &RunEnd) {
        let Some(tracking) = self.tracking.take() else {
            return;
        };
        let status = match end.status {
            Status::Completed => RunStatus::Finished,
            Status::Failed => RunStatus::Failed,
            Status::Interrupted | Status::Paused => RunStatus::Killed,
        };
        let report = tracking.finish(status);
        let line = report.summary(end.run_dir);
        if report.complete() {
            tracing::debug!("{line}");
        } else {
            tracing::warn!("{line}");
        }
    }
}

/// What `kiln sync` did, as JSON.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Lines of `metrics.jsonl`.
    pub lines: usize,
    /// Where the TensorBoard events were rewritten, if TensorBoard is on.
    pub tensorboard: Option<PathBuf>,
    /// The MLflow run, and the lines sent to it now (those it did not have).
    pub mlflow: Option<MlflowSync>,
    /// The status the trackers recorded.
    pub status: &'static str,
}

/// The MLflow part of [`SyncReport`].
#[derive(Debug, Serialize)]
pub struct MlflowSync {
    /// The MLflow run's id.
    pub run_id: String,
    /// Lines sent now.
    pub sent_lines: usize,
}

/// Sends the run in `run_dir` to the trackers of its config (with `overrides`, e.g.
/// `tracking.mlflow=...`) from its `metrics.jsonl`: TensorBoard's event files are rewritten from
/// it; MLflow gets the lines it does not have yet, in the same MLflow run. Running it again sends
/// nothing new.
pub fn sync(run_dir: &Path, overrides: &[String]) -> Result<SyncReport> {
    let config = Config::load_for_resume(&run_dir.join(CONFIG_FILE), overrides)?;
    let metrics = run_dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&metrics).with_context(|| {
        format!(
            "cannot read {}: is {} a run directory?",
            metrics.display(),
            run_dir.display()
        )
    })?;
    let records: Vec<Record> = text.lines().filter_map(Record::parse).collect();
    let finished = records
        .iter()
        .any(|r| r.fields.get("split").and_then(Value::as_str) == Some("test"));
    let status = if finished {
        RunStatus::Finished
    } else {
        RunStatus::Killed
    };
    let info = run_info(&config, run_dir, None);
    let replay = |tracker: &mut dyn Tracker| -> Result<()> {
        tracker.start(&info)?;
        for r in &records {
            tracker.record(r)?;
        }
        tracker.end(status)
    };
    let tensorboard = match tensorboard_dir(&config, run_dir) {
        Some(dir) => {
            // Written aside, then swapped in: the event files then hold metrics.jsonl exactly.
            let fresh = dir.with_extension("sync");
            if fresh.exists() {
                std::fs::remove_dir_all(&fresh)
                    .with_context(|| format!("cannot remove {}", fresh.display()))?;
            }
            replay(&mut TensorBoard::new(fresh.clone()))?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot replace {}", dir.display()))?;
            }
            std::fs::rename(&fresh, &dir)
                .with_context(|| format!("cannot move {} to {}", fresh.display(), dir.display()))?;
            Some(dir)
        }
        None => None,
    };
    let mlflow = match mlflow_server(&config)? {
        Some(server) => {
            let had = State::read(run_dir)?
                .filter(|s| s.tracking_uri == server.uri)
                .map_or(0, |s| s.sent_lines.min(records.len()));
            let mut tracker =
                Mlflow::new(server, run_dir.to_path_buf()).log_weights(config.tracking.log_weights);
            tracker.skip_lines(had);
            replay(&mut tracker)?;
            let state = State::read(run_dir)?.context("the MLflow tracker wrote no mlflow.json")?;
            Some(MlflowSync {
                run_id: state.run_id,
                sent_lines: records.len() - had,
            })
        }
        None => None,
    };
    if tensorboard.is_none() && mlflow.is_none() {
        anyhow::bail!(
            "{}: no tracker is on in its config; add --set tracking.tensorboard=true or --set tracking.mlflow=URI",
            run_dir.display()
        );
    }
    Ok(SyncReport {
        run_dir: run_dir.to_path_buf(),
        lines: records.len(),
        tensorboard,
        mlflow,
        status: status.name(),
    })
}
