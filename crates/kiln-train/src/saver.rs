//! Checkpointing from the training loop: copy the state to host memory, hand it to the
//! background writer, and report (as a checkpoint event) how long the loop stalled and how long
//! the write took.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use kiln_checkpoint::layout::{MODEL_FILE, OPTIMIZER_FILE};
use kiln_checkpoint::{Pending, Writer, Written};
use kiln_core::Config;

use crate::checkpoint::{model_to_host, optimizer_to_host, ParamTable, TrainState};
use crate::events::CheckpointEvent;
use crate::optim::Optim;

/// Writes the run's checkpoints in the background (the loop waits only to copy the tensors to
/// the host), prunes old ones, and reports each when it is complete on disk.
pub struct Saver {
    run: PathBuf,
    writer: Writer,
    config_hash: String,
    keep_last: Option<usize>,
    /// Seconds the loop was blocked for each checkpoint still being written.
    stalls: HashMap<usize, f64>,
    last: Option<PathBuf>,
}

impl Saver {
    /// A saver for the run directory `run` of a run of `config`.
    pub fn new(run: &Path, config: &Config) -> Self {
        Self {
            run: run.to_path_buf(),
            writer: Writer::new(run),
            config_hash: config.maths_hash(),
            keep_last: config.checkpoint.keep_last,
            stalls: HashMap::new(),
            last: None,
        }
    }

    /// Copies the model, optimizer and `state` to host memory and starts writing them as the
    /// checkpoint of `step` (after the previous write finished); the previous write's event.
    #[allow(clippy::too_many_arguments)]
    pub fn save<B: AutodiffBackend, M: Module<B>>(
        &mut self,
        step: usize,
        model: &M,
        optim: &Optim<B>,
        table: &ParamTable,
        state: TrainState,
        best: bool,
    ) -> Result<Option<CheckpointEvent>> {
        let started = Instant::now();
        let model = model_to_host(model, table)?;
        let optimizer = optimizer_to_host(optim, table)?;
        let serde_json::Value::Object(state) = serde_json::to_value(state)? else {
            unreachable!("TrainState serializes to an object")
        };
        let pending = Pending {
            step,
            files: vec![
                (MODEL_FILE.to_string(), model),
                (OPTIMIZER_FILE.to_string(), optimizer),
            ],
            state,
            config_hash: self.config_hash.clone(),
            best,
            keep_last: self.keep_last,
        };
        let previous = self.writer.submit(pending).map_err(|e| self.hint(e))?;
        self.stalls.insert(step, started.elapsed().as_secs_f64());
        Ok(previous.map(|w| self.report(w)))
    }

    /// The event of a finished background write, if there is one; never blocks.
    pub fn poll(&mut self) -> Result<Option<CheckpointEvent>> {
        let written = self.writer.poll().map_err(|e| self.hint(e))?;
        Ok(written.map(|w| self.report(w)))
    }

    /// Waits for the write in flight; its event, and the newest checkpoint written.
    pub fn finish(&mut self) -> Result<(Option<CheckpointEvent>, Option<PathBuf>)> {
        let written = self.writer.wait().map_err(|e| self.hint(e))?;
        let event = written.map(|w| self.report(w));
        Ok((event, self.last.clone()))
    }

    fn report(&mut self, w: Written) -> CheckpointEvent {
        self.last = Some(w.dir.clone());
        CheckpointEvent {
            step: w.step,
            event: "checkpoint",
            stall_secs: self.stalls.remove(&w.step).unwrap_or(0.0),
            dir: w.dir,
            bytes: w.bytes,
            write_secs: w.write_secs,
            pruned: w.pruned,
        }
    }

    fn hint(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!(
            "saving a checkpoint failed; free space or make {} writable, then continue with: kiln train --resume {}",
            self.run.display(),
            self.run.display()
        ))
    }
}
