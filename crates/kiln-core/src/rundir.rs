//! The run directory: everything one run writes, in one place. The file names are
//! [`kiln_checkpoint::layout`]'s (re-exported as [`crate::layout`]), which also shows the tree.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_checkpoint::layout::{CONFIG_FILE, LATEST, METRICS_FILE, MODEL_FILE, RUN_INFO_FILE};
use kiln_checkpoint::write_atomic;
use serde::Serialize;

use crate::Config;

/// Facts about a run, written once to `run.json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// The backend that trained the run (`flex`, `cuda`, ...).
    pub backend: String,
    /// Rank 0's device.
    pub device: String,
    /// The number of data-parallel workers.
    pub world_size: usize,
    /// Each worker's host and device, in rank order.
    pub devices: Vec<WorkerDevice>,
    /// The version of Kiln that started the run.
    pub kiln_version: String,
    /// The git commit of the working directory, when it is a git checkout.
    pub git_commit: Option<String>,
    /// When the run started (RFC 3339, UTC).
    pub start_time: String,
    /// `run.seed`.
    pub seed: u64,
    /// The command line of rank 0.
    pub command: Vec<String>,
}

/// Where one data-parallel worker ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerDevice {
    /// The worker's rank.
    pub rank: usize,
    /// Its machine's host name.
    pub host: String,
    /// Its device, as the backend names it.
    pub device: String,
}

impl RunInfo {
    /// The facts of a run of `backend` with seed `seed` whose workers ran on `devices` (rank
    /// order; at least one).
    pub fn new(backend: &str, devices: Vec<WorkerDevice>, seed: u64) -> Self {
        Self {
            backend: backend.to_string(),
            device: devices
                .first()
                .map_or_else(String::new, |d| d.device.clone()),
            world_size: devices.len(),
            devices,
            kiln_version: crate::VERSION.to_string(),
            git_commit: git_commit(),
            start_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            seed,
            command: std::env::args().collect(),
        }
    }
}

/// This machine's host name (empty when the system does not say).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    if !ok {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An open run directory.
pub struct RunDir {
    root: PathBuf,
    metrics: BufWriter<File>,
}

impl RunDir {
    /// Creates `<output_dir>/<name>`, refusing to reuse a directory that already holds a run
    /// unless `run.overwrite` is set, and writes `config.toml` and `run.json`.
    pub fn create(config: &Config, info: &RunInfo) -> Result<RunDir> {
        let root = config.run.output_dir.join(&config.run.name);
        if root.join(CONFIG_FILE).exists() {
            if !config.run.overwrite {
                bail!(
                    "run directory {} already holds a run; choose another run.name (e.g. --set run.name=...), or pass --set run.overwrite=true to replace it",
                    root.display()
                );
            }
            fs::remove_dir_all(&root)
                .with_context(|| format!("cannot remove old run directory {}", root.display()))?;
        }
        fs::create_dir_all(&root)
            .with_context(|| format!("cannot create run directory {}", root.display()))?;
        write_atomic(&root.join(CONFIG_FILE), config.to_toml().as_bytes())?;
        let info = serde_json::to_vec_pretty(info).expect("RunInfo serializes");
        write_atomic(&root.join(RUN_INFO_FILE), &info)?;
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(METRICS_FILE))
            .with_context(|| format!("cannot open {}/{METRICS_FILE}", root.display()))?;
        Ok(RunDir {
            root,
            metrics: BufWriter::new(metrics),
        })
    }

    /// Opens the existing run directory `root` to continue it.
    pub fn open(root: &Path) -> Result<RunDir> {
        if !root.join(CONFIG_FILE).is_file() {
            bail!(
                "{} is not a Kiln run directory (it has no config.toml)",
                root.display()
            );
        }
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(METRICS_FILE))
            .with_context(|| format!("cannot open {}/{METRICS_FILE}", root.display()))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            metrics: BufWriter::new(metrics),
        })
    }

    /// Rewrites `config.toml` (a resumed run's overrides).
    pub fn write_config(&self, config: &Config) -> Result<()> {
        write_atomic(&self.root.join(CONFIG_FILE), config.to_toml().as_bytes())
    }

    /// Drops the events after `step` from `metrics.jsonl` (and a torn last line): a resumed run
    /// recomputes them. Returns how many lines were dropped.
    pub fn truncate_metrics(&mut self, step: usize) -> Result<usize> {
        let path = self.root.join(METRICS_FILE);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut kept = String::new();
        let mut dropped = 0;
        for line in text.lines() {
            let keep = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step);
            if keep {
                kept.push_str(line);
                kept.push('\n');
            } else {
                dropped += 1;
            }
        }
        write_atomic(&path, kept.as_bytes())?;
        *self = RunDir::open(&self.root)?;
        Ok(dropped)
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Appends one event to `metrics.jsonl` and flushes it, so the file is readable while the run
    /// goes on.
    pub fn log_event(&mut self, event: &serde_json::Value) -> Result<()> {
        serde_json::to_writer(&mut self.metrics, event)?;
        self.metrics.write_all(b"\n")?;
        self.metrics
            .flush()
            .with_context(|| format!("cannot write {}/{METRICS_FILE}", self.root.display()))
    }
}

/// The model weights a path designates: a weights file itself, a checkpoint directory, or a run
/// directory (its `latest` checkpoint).
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        bail!(
            "{} does not exist; give a run directory, a step-<N> directory or a .safetensors file",
            path.display()
        );
    }
    let candidate = path.join(MODEL_FILE);
    if candidate.is_file() {
        return Ok(candidate);
    }
    let latest = path.join(LATEST);
    if latest.is_file() {
        let step = fs::read_to_string(&latest)
            .with_context(|| format!("cannot read {}", latest.display()))?;
        let file = path.join(step.trim()).join(MODEL_FILE);
        if file.is_file() {
            return Ok(file);
        }
        bail!(
            "{} names {} but {} is missing",
            latest.display(),
            step.trim(),
            file.display()
        );
    }
    bail!(
        "{} holds no model.safetensors and no `latest` pointer; is it a Kiln run directory?",
        path.display()
    )
}

/// A trained run as a path designates it: see [`TrainedRun::find`].
#[derive(Clone, Debug)]
pub struct TrainedRun {
    /// The weights file (a checkpoint's `model.safetensors`).
    pub weights: PathBuf,
    /// The run directory holding it.
    pub run_dir: PathBuf,
    /// The run's config.
    pub config: Config,
}

impl TrainedRun {
    /// The weights that `path` (a run directory, a step directory or a weights file inside a run
    /// directory) names, with the run's directory and config.
    pub fn find(path: &Path) -> Result<TrainedRun> {
        let weights = resolve_weights(path)?;
        let config_path = find_run_config(&weights)?;
        let config = Config::load(&config_path, &[])
            .with_context(|| format!("reading the run config of {}", path.display()))?;
        let run_dir = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(TrainedRun {
            weights,
            run_dir,
            config,
        })
    }
}

/// Finds the run's resolved `config.toml` for a weights path (the file's checkpoint directory's
/// parent run directory, or the run directory itself).
pub fn find_run_config(path: &Path) -> Result<PathBuf> {
    let mut dir = if path.is_file() {
        path.parent()
    } else {
        Some(path)
    };
    while let Some(d) = dir {
        let c = d.join(CONFIG_FILE);
        if c.is_file() {
            return Ok(c);
        }
        dir = d.parent();
    }
    bail!(
        "no config.toml found in {} or above it; evaluate a path inside a Kiln run directory",
        path.display()
    )
}
