//! Writing checkpoints: atomically, and in the background with at most one write in flight.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::fsutil::{sha256_hex, sync_dir, write_atomic, write_synced};
use crate::layout::{step_dir_name, BEST, LATEST, STATE_FILE};
use crate::read::{list_steps, read_pointer};
use crate::tensors::{encode, HostTensor};
use crate::FORMAT;

/// A checkpoint whose contents are in host memory, ready to be written.
pub struct Pending {
    /// The step the state was taken after; names the directory `step-<N>`.
    pub step: usize,
    /// Tensor files by name, e.g. `("model.safetensors", tensors)`.
    pub files: Vec<(String, Vec<HostTensor>)>,
    /// The trainer's state; its keys are merged into `state.json`.
    pub state: Map<String, Value>,
    /// Hash of the resolved config that produced this state.
    pub config_hash: String,
    /// Point `best` at this checkpoint.
    pub best: bool,
    /// Keep only the newest n checkpoints (and the best).
    pub keep_last: Option<usize>,
}

/// What a finished write reports.
#[derive(Clone, Debug)]
pub struct Written {
    /// The checkpoint's step.
    pub step: usize,
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes written (all files).
    pub bytes: u64,
    /// Seconds the write took, syncs included.
    pub write_secs: f64,
    /// Steps of the older checkpoints removed by `keep_last`.
    pub pruned: Vec<usize>,
}

/// Writes `p` into `<run>/step-<N>/`: every file into `step-<N>.tmp/`, synced, the directory
/// renamed into place, then `latest` (and `best`) updated and old checkpoints pruned. On error
/// the temporary directory is removed and every earlier checkpoint is untouched.
pub fn write_checkpoint(run: &Path, p: Pending) -> Result<Written> {
    let started = Instant::now();
    let name = step_dir_name(p.step);
    let dir = run.join(&name);
    let tmp = run.join(format!("{name}.tmp"));
    let written = write_tmp(&tmp, &p).and_then(|bytes| {
        replace_dir(&tmp, &dir)?;
        sync_dir(run)?;
        Ok(bytes)
    });
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.context(format!(
                "checkpoint {name} was not written; the earlier checkpoints in {} are intact",
                run.display()
            )));
        }
    };
    write_atomic(&run.join(LATEST), format!("{name}\n").as_bytes())?;
    if p.best {
        write_atomic(&run.join(BEST), format!("{name}\n").as_bytes())?;
    }
    let pruned = match p.keep_last {
        Some(keep) => prune(run, keep, p.step)?,
        None => Vec::new(),
    };
    Ok(Written {
        step: p.step,
        dir,
        bytes,
        write_secs: started.elapsed().as_secs_f64(),
        pruned,
    })
}

fn write_tmp(tmp: &Path, p: &Pending) -> Result<u64> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for (file, tensors) in &p.files {
        // One entry only: safetensors writes metadata in hash-map order, and identical
        // checkpoints should be identical files.
        let metadata = HashMap::from([("format".to_string(), FORMAT.to_string())]);
        let bytes = encode(tensors, metadata).with_context(|| format!("encoding {file}"))?;
        write_synced(&tmp.join(file), &bytes)?;
        total += bytes.len() as u64;
        files.insert(
            file.clone(),
            json!({"sha256": sha256_hex(&bytes), "bytes": bytes.len()}),
        );
    }
    let mut state = Map::new();
    state.insert("format".into(), json!(FORMAT));
    state.insert("kiln_version".into(), json!(env!("CARGO_PKG_VERSION")));
    state.insert("step".into(), json!(p.step));
    state.insert(
        "created".into(),
        json!(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
    );
    state.insert("config_hash".into(), json!(p.config_hash));
    state.insert("files".into(), json!(files));
    for (k, v) in &p.state {
        state.insert(k.clone(), v.clone());
    }
    let text = serde_json::to_vec_pretty(&Value::Object(state)).expect("JSON serializes");
    write_synced(&tmp.join(STATE_FILE), &text)?;
    total += text.len() as u64;
    sync_dir(tmp)?;
    Ok(total)
}

/// Renames `tmp` to `dir`, replacing an older directory of the same name (a checkpoint of a
/// step that is being redone after a resume from an earlier one).
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let old = dir.with_extension("replaced");
    let had_old = dir.exists();
    if had_old {
        let _ = fs::remove_dir_all(&old);
        fs::rename(dir, &old).with_context(|| format!("cannot move aside {}", dir.display()))?;
    }
    fs::rename(tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Removes all but the newest `keep` checkpoints, never the `best` one nor `current`.
fn prune(run: &Path, keep: usize, current: usize) -> Result<Vec<usize>> {
    let best = read_pointer(run, BEST);
    let steps = list_steps(run)?;
    let mut removed = Vec::new();
    let cut = steps.len().saturating_sub(keep);
    for &step in &steps[..cut] {
        if Some(step) == best || step == current {
            continue;
        }
        let dir = run.join(step_dir_name(step));
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        removed.push(step);
    }
    Ok(removed)
}

/// Removes `step-<N>.tmp` directories left by a write that never finished (a killed run).
pub fn remove_partial(run: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(run) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let partial = name.strip_suffix(".tmp").or(name.strip_suffix(".replaced"));
            if partial.and_then(crate::layout::parse_step_dir).is_some()
                && fs::remove_dir_all(e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    }
    removed
}

/// Writes checkpoints on a background thread, one at a time: handing over a new checkpoint
/// first waits for the previous write. Dropping the writer waits for the write in flight.
pub struct Writer {
    run: PathBuf,
    in_flight: Option<JoinHandle<Result<Written>>>,
}

impl Writer {
    /// A writer of checkpoints into run directory `run`, idle.
    pub fn new(run: &Path) -> Self {
        Self {
            run: run.to_path_buf(),
            in_flight: None,
        }
    }

    /// Starts writing `p` in the background after the previous write finished; returns the
    /// previous write's outcome.
    pub fn submit(&mut self, p: Pending) -> Result<Option<Written>> {
        let previous = self.wait()?;
        let run = self.run.clone();
        let handle = std::thread::Builder::new()
            .name("kiln-checkpoint".into())
            .spawn(move || write_checkpoint(&run, p))
            .context("cannot start the checkpoint writer thread")?;
        self.in_flight = Some(handle);
        Ok(previous)
    }

    /// The outcome of the write in flight if it has finished; never blocks.
    pub fn poll(&mut self) -> Result<Option<Written>> {
        match &self.in_flight {
            Some(h) if h.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    /// Waits for the write in flight, if any, and returns its outcome.
    pub fn wait(&mut self) -> Result<Option<Written>> {
        match self.in_flight.take() {
            None => Ok(None),
            Some(h) => match h.join() {
                Ok(r) => r.map(Some),
                Err(_) => anyhow::bail!("the checkpoint writer thread panicked"),
            },
        }
    }

    /// Whether a write is in flight (or finished but not yet collected).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("{e:#}");
        }
    }
}
