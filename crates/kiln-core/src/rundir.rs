//! The run directory: everything one run writes, in one place.
//!
//! ```text
//! <output_dir>/<run.name>/
//!   config.toml     the fully resolved config
//!   run.json        backend, device, world size, kiln version, git commit, start time, seed
//!   metrics.jsonl   one JSON object per event
//!   step-<N>/       checkpoints (see the kiln-checkpoint crate)
//!   latest, best    names of the newest and of the best complete checkpoint directory
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::Config;

/// Facts about a run, written once to `run.json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub backend: String,
    pub device: String,
    pub world_size: usize,
    pub kiln_version: String,
    pub git_commit: Option<String>,
    pub start_time: String,
    pub seed: u64,
    pub command: Vec<String>,
}

impl RunInfo {
    pub fn new(backend: &str, device: &str, seed: u64) -> Self {
        Self {
            backend: backend.to_string(),
            device: device.to_string(),
            world_size: 1,
            kiln_version: crate::VERSION.to_string(),
            git_commit: git_commit(),
            start_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            seed,
            command: std::env::args().collect(),
        }
    }
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
        if root.join("config.toml").exists() {
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
        write_atomic(&root.join("config.toml"), config.to_toml().as_bytes())?;
        let info = serde_json::to_vec_pretty(info).expect("RunInfo serializes");
        write_atomic(&root.join("run.json"), &info)?;
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("metrics.jsonl"))
            .with_context(|| format!("cannot open {}/metrics.jsonl", root.display()))?;
        Ok(RunDir {
            root,
            metrics: BufWriter::new(metrics),
        })
    }

    /// Opens the existing run directory `root` to continue it.
    pub fn open(root: &Path) -> Result<RunDir> {
        if !root.join("config.toml").is_file() {
            bail!(
                "{} is not a Kiln run directory (it has no config.toml)",
                root.display()
            );
        }
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("metrics.jsonl"))
            .with_context(|| format!("cannot open {}/metrics.jsonl", root.display()))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            metrics: BufWriter::new(metrics),
        })
    }

    /// Rewrites `config.toml` (a resumed run's overrides).
    pub fn write_config(&self, config: &Config) -> Result<()> {
        write_atomic(&self.root.join("config.toml"), config.to_toml().as_bytes())
    }

    /// Drops the events after `step` from `metrics.jsonl` (and a torn last line): a resumed run
    /// recomputes them. Returns how many lines were dropped.
    pub fn truncate_metrics(&mut self, step: usize) -> Result<usize> {
        let path = self.root.join("metrics.jsonl");
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
            .with_context(|| format!("cannot write {}/metrics.jsonl", self.root.display()))
    }

    /// Directory of the checkpoint at `step`.
    pub fn step_dir(&self, step: usize) -> PathBuf {
        self.root.join(format!("step-{step}"))
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
    let candidate = path.join("model.safetensors");
    if candidate.is_file() {
        return Ok(candidate);
    }
    let latest = path.join("latest");
    if latest.is_file() {
        let step = fs::read_to_string(&latest)
            .with_context(|| format!("cannot read {}", latest.display()))?;
        let file = path.join(step.trim()).join("model.safetensors");
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

/// Finds the run's resolved `config.toml` for a weights path (the file's checkpoint directory's
/// parent run directory, or the run directory itself).
pub fn find_run_config(path: &Path) -> Result<PathBuf> {
    let mut dir = if path.is_file() {
        path.parent()
    } else {
        Some(path)
    };
    while let Some(d) = dir {
        let c = d.join("config.toml");
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

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}
