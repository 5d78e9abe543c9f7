//! Running a sweep: each trial a `kiln train` process in its own process group, `jobs` at a
//! time with the cores split between them, `sweep.json` written as each ends.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{SweepSpec, SweepState, Trial, TrialRecord, TrialStatus};
use crate::mlflow::{self, Server};
use crate::RunStatus;

/// Checks a trial's `--set` overrides against the base config file.
pub type Check = Box<dyn Fn(&Path, &[String]) -> Result<()>>;

/// How [`run`] runs trials.
pub struct RunOptions {
    /// The `kiln` binary that trains them.
    pub kiln: PathBuf,
    /// Trials at a time; the machine's cores are split between them.
    pub jobs: usize,
    /// Set by a signal: start no more trials, let the running ones checkpoint and stop.
    pub stop: Arc<AtomicBool>,
    /// Checks a trial's overrides against the base config before anything runs.
    pub check: Check,
}

/// What a sweep did.
#[derive(Clone, Debug, Serialize)]
pub struct SweepOutcome {
    /// The sweep's directory (trials and `sweep.json`).
    pub dir: PathBuf,
    /// Whether every trial ended (finished or failed).
    pub complete: bool,
    /// The state, trials in run order.
    pub state: SweepState,
    /// The trials best first (failed, NaN and unfinished ones last).
    pub ranked: Vec<TrialRecord>,
    /// The best trial's `config.toml`.
    pub best_config: Option<PathBuf>,
}

/// A sweep about to run: its file, trials, directory and state.
struct Sweep {
    spec: SweepSpec,
    base: PathBuf,
    trials: Vec<Trial>,
    dir: PathBuf,
    state: SweepState,
    mlflow: Option<Server>,
}

/// Runs (or continues) the sweep of the file `path`.
pub fn run(path: &Path, opts: &RunOptions) -> Result<SweepOutcome> {
    let mut sweep = open(path, opts)?;
    let threads =
        (std::thread::available_parallelism().map_or(1, |n| n.get()) / opts.jobs.max(1)).max(1);
    let mut queue = (0..sweep.trials.len())
        .filter(|&i| {
            matches!(
                sweep.state.trials[i].status,
                TrialStatus::Pending | TrialStatus::Interrupted
            )
        })
        .collect::<Vec<_>>()
        .into_iter();
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut forwarded = false;
    loop {
        while running.len() < opts.jobs.max(1) && !opts.stop.load(Ordering::Relaxed) {
            let Some(i) = queue.next() else { break };
            tracing::info!(
                "trial {} of {}: {}",
                i + 1,
                sweep.trials.len(),
                sweep.trials[i].name
            );
            running.push((i, sweep.spawn(i, &opts.kiln, threads)?));
        }
        if running.is_empty() {
            break;
        }
        if opts.stop.load(Ordering::Relaxed) && !forwarded {
            // The trials checkpoint and stop, as a signalled `kiln train` does.
            for (_, child) in &running {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut still = Vec::new();
        for (i, mut child) in running {
            match child.try_wait()? {
                None => still.push((i, child)),
                Some(status) => sweep.settle(i, child, status)?,
            }
        }
        running = still;
    }
    sweep.finish()
}

/// Reads the sweep file, plans and checks its trials, and opens (or continues) its directory.
fn open(path: &Path, opts: &RunOptions) -> Result<Sweep> {
    let spec = SweepSpec::load(path)?;
    let base = path.parent().unwrap_or(Path::new(".")).join(&spec.base);
    let text = std::fs::read_to_string(&base).with_context(|| {
        format!(
            "{}: base = {}: cannot read it",
            path.display(),
            base.display()
        )
    })?;
    let base_table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: invalid TOML", base.display()))?;
    let seed = base_table
        .get("run")
        .and_then(|r| r.get("seed"))
        .and_then(toml::Value::as_integer);
    let trials = spec.trials(seed.unwrap_or(42) as u64);
    for t in &trials {
        (opts.check)(&base, &t.overrides())
            .with_context(|| format!("{}: trial {}", path.display(), t.name))?;
    }
    let name = match &spec.name {
        Some(n) => n.clone(),
        None => path
            .file_stem()
            .context("the sweep file has no name")?
            .to_string_lossy()
            .into_owned(),
    };
    let dir = spec
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("checkpoints/sweeps"))
        .join(&name);
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let fresh = SweepState {
        name,
        metric: spec.metric.clone(),
        goal: spec.goal,
        trials: trials.iter().map(TrialRecord::pending).collect(),
        mlflow_parent_run_id: None,
    };
    let mut state = match std::fs::read_to_string(dir.join("sweep.json")) {
        Ok(text) => {
            let earlier: SweepState = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}/sweep.json is damaged; remove the sweep's directory to start it again",
                    dir.display()
                )
            })?;
            let names =
                |s: &SweepState| s.trials.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
            if names(&earlier) != names(&fresh) || earlier.metric != fresh.metric {
                bail!("{}: the sweep in {} has other trials or another metric; give this sweep another name, or remove that directory", path.display(), dir.display());
            }
            earlier
        }
        Err(_) => fresh,
    };
    let mlflow = mlflow_of(&base_table)?;
    if let Some(server) = &mlflow {
        let id = mlflow::parent_run(
            server.clone(),
            &state.name,
            state.mlflow_parent_run_id.as_deref(),
        )?;
        state.mlflow_parent_run_id = Some(id);
    }
    state.write(&dir)?;
    Ok(Sweep {
        spec,
        base,
        trials,
        dir,
        state,
        mlflow,
    })
}

impl Sweep {
    /// Starts trial `i`: resumed from its checkpoint if it has one, else from the base config.
    fn spawn(&self, i: usize, kiln: &Path, threads: usize) -> Result<Child> {
        let t = &self.trials[i];
        let run_dir = self.dir.join(&t.name);
        let mut cmd = Command::new(kiln);
        if run_dir.join("latest").exists() {
            cmd.args(["train", "--resume"]).arg(&run_dir);
        } else {
            cmd.arg("train").arg(&self.base);
            let mut sets = vec![
                format!("run.name=\"{}\"", t.name),
                format!("run.output_dir=\"{}\"", self.dir.display()),
                "run.overwrite=true".into(),
            ];
            sets.extend(t.overrides());
            for s in sets {
                cmd.args(["--set", &s]);
            }
        }
        let log = std::fs::File::create(self.dir.join("logs").join(format!("{}.log", t.name)))?;
        // Its own process group: a Ctrl-C reaches the sweep alone, which passes one SIGTERM on
        // (a second signal would make `kiln train` exit without its checkpoint).
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(parent) = &self.state.mlflow_parent_run_id {
            cmd.env("KILN_MLFLOW_PARENT_RUN_ID", parent);
        }
        cmd.env("RAYON_NUM_THREADS", threads.to_string())
            .env("KILN_TRACKING_GROUP", &t.group)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", kiln.display()))
    }

    /// Records how trial `i` ended: finished with its metric, interrupted, or failed.
    fn settle(&mut self, i: usize, mut child: Child, status: ExitStatus) -> Result<()> {
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        let (name, metric) = (&self.trials[i].name, &self.spec.metric);
        let record = &mut self.state.trials[i];
        (record.status, record.value, record.error) =
            match (status.success(), summary["status"].as_str()) {
                (true, Some("completed")) => match last_value(&self.dir.join(name), metric) {
                    Some(v) if v.is_finite() => (TrialStatus::Finished, Some(v), None),
                    Some(v) => (
                        TrialStatus::Failed,
                        Some(v),
                        Some(format!("{metric} is {v}")),
                    ),
                    None => (
                        TrialStatus::Failed,
                        None,
                        Some(format!("no {metric} logged")),
                    ),
                },
                (true, _) => (TrialStatus::Interrupted, None, None),
                (false, _) => (
                    TrialStatus::Failed,
                    None,
                    Some(format!("{status}; see logs/{name}.log")),
                ),
            };
        let value = record
            .value
            .map_or(String::new(), |v| format!(" {metric} {v:.6}"));
        tracing::info!("trial {name}: {:?}{value}", record.status);
        self.state.write(&self.dir)
    }

    /// The outcome; the MLflow parent run ends with the best value.
    fn finish(self) -> Result<SweepOutcome> {
        let state = self.state;
        let complete = state
            .trials
            .iter()
            .all(|t| matches!(t.status, TrialStatus::Finished | TrialStatus::Failed));
        let best = state
            .ranked()
            .first()
            .filter(|t| t.status == TrialStatus::Finished)
            .map(|t| (*t).clone());
        if let (Some(server), Some(id)) = (self.mlflow, &state.mlflow_parent_run_id) {
            let metrics: Vec<(String, f64)> = best
                .iter()
                .filter_map(|t| Some((format!("best/{}", state.metric), t.value?)))
                .collect();
            let status = if complete {
                RunStatus::Finished
            } else {
                RunStatus::Killed
            };
            if let Err(e) = mlflow::end_run(server, id, status, &metrics) {
                tracing::warn!("the sweep's MLflow parent run: {e:#}");
            }
        }
        let best_config = best
            .filter(|_| complete)
            .map(|t| self.dir.join(&t.name).join("config.toml"));
        let ranked = state.ranked().into_iter().cloned().collect();
        Ok(SweepOutcome {
            dir: self.dir,
            complete,
            state,
            ranked,
            best_config,
        })
    }
}

/// The MLflow server of the base config's `[tracking]`, when it reports to MLflow.
fn mlflow_of(base: &toml::Table) -> Result<Option<Server>> {
    let tracking = base.get("tracking");
    let place = match tracking.and_then(|t| t.get("mlflow")) {
        Some(toml::Value::Boolean(true)) => None,
        Some(toml::Value::String(uri)) => Some(uri.as_str()),
        _ => return Ok(None),
    };
    let experiment = tracking
        .and_then(|t| t.get("experiment"))
        .and_then(toml::Value::as_str);
    Server::from_env(place, experiment).map(Some)
}

/// The last value of `metric` (`<split>/<field>`) in the run's `metrics.jsonl`.
fn last_value(run_dir: &Path, metric: &str) -> Option<f64> {
    let (split, field) = metric.split_once('/')?;
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).ok()?;
    text.lines()
        .rev()
        .filter_map(crate::Record::parse)
        .filter(|r| r.group() == Some(split))
        .find_map(|r| r.fields.get(field).and_then(serde_json::Value::as_f64))
}
