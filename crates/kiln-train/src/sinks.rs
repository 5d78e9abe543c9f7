//! Kiln's own sinks ([`crate::events::Sink`]): [`Jsonl`], the run's record in
//! `metrics.jsonl` (the source of truth: what `kiln eval`, resume and every tracker read), and
//! [`Console`], what a person watching sees (a progress bar on a terminal, plain `tracing` lines
//! otherwise, e.g. in cluster job logs).

use anyhow::Result;
use kiln_core::RunDir;

use crate::events::{Event, RunEnd, RunStart, Sink, Status};
use crate::progress::Progress;
use crate::tracked::Tracked;
use kiln_infer::EvalResult;

/// Appends every event to the run directory's `metrics.jsonl`, one JSON object per line with
/// the wall-clock `time` (seconds since the Unix epoch), flushed at once so that the file is
/// readable while the run goes on; and hands each line, as written, to the run's trackers.
pub struct Jsonl {
    run: RunDir,
    tracked: Option<Tracked>,
}

impl Jsonl {
    /// The record of `run`, reported to `tracked` too.
    pub fn new(run: RunDir, tracked: Option<Tracked>) -> Self {
        Jsonl { run, tracked }
    }
}

impl Sink for Jsonl {
    fn start(&mut self, run: &RunStart) -> Result<()> {
        if let Some(tracked) = self.tracked.as_mut() {
            tracked.start(run);
        }
        Ok(())
    }

    fn event(&mut self, event: &Event) -> Result<()> {
        // Through a JSON value, whose keys are sorted: the lines earlier versions wrote.
        let mut line = serde_json::to_value(event)?;
        if let serde_json::Value::Object(fields) = &mut line {
            let time = (kiln_track::record::now() * 1000.0).round() / 1000.0;
            fields.insert("time".into(), time.into());
            if let Some(tracked) = self.tracked.as_mut() {
                tracked.line(fields);
            }
        }
        self.run.log_event(&line)
    }

    fn end(&mut self, end: &RunEnd) -> Result<()> {
        if let Some(tracked) = self.tracked.as_mut() {
            tracked.end(end);
        }
        Ok(())
    }
}

/// The progress bar or log lines, and the run's first and last log lines.
pub struct Console {
    progress: Progress,
    /// What the throughput counts: "samples" or "tokens".
    unit: &'static str,
}

impl Console {
    /// Reports throughput in `unit`s per second.
    pub fn new(unit: &'static str) -> Self {
        Console {
            progress: Progress::quiet(),
            unit,
        }
    }
}

impl Sink for Console {
    /// The first log line: where, on what, the data, the model size and the workers.
    fn start(&mut self, run: &RunStart) -> Result<()> {
        self.progress = Progress::new(run.total_steps, run.resumed_from.unwrap_or(0));
        let c = run.config;
        let (batch, accum, world) = (c.data.batch_size, c.train.grad_accum_steps, run.workers);
        let workers = if world > 1 {
            let accumulation = if accum > 1 {
                format!(" x {accum} accumulation steps")
            } else {
                String::new()
            };
            format!(
                "; {world} workers ({}), effective batch {} = {batch} per worker x {world}{accumulation}",
                run.engine,
                batch * world * accum,
            )
        } else {
            String::new()
        };
        tracing::info!(
            "run {} on {} ({}, {}): {}; model: {} parameters{workers}",
            run.run_dir.display(),
            run.backend,
            run.device,
            c.train.precision.name(),
            run.data,
            run.params,
        );
        Ok(())
    }

    fn event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Train(t) => {
                let metrics: String = t
                    .metrics
                    .iter()
                    .map(|(name, v)| format!(" {} {v:.3}", short_name(name)))
                    .collect();
                let line = format!(
                    "loss {:.4}{metrics} lr {:.2e} {:.0} {}/s",
                    t.loss, t.lr, t.samples_per_sec, self.unit
                );
                self.progress.step(t.step, Some(&line));
            }
            Event::Eval(e) if e.split == "valid" => {
                let text = format!("step {}: valid {}", e.step, describe(&e.result));
                self.progress.message(&text);
            }
            Event::Checkpoint(c) => tracing::debug!(
                "checkpoint {} written: {} bytes in {:.3} s, loop stalled {:.3} s",
                c.dir.display(),
                c.bytes,
                c.write_secs,
                c.stall_secs
            ),
            Event::Eval(_) | Event::Resume(_) | Event::System(_) => {}
        }
        Ok(())
    }

    fn step(&mut self, step: usize) {
        self.progress.step(step, None);
    }

    fn message(&mut self, text: &str) {
        self.progress.message(text);
    }

    /// The closing log line: the test result and where the weights are, or how to continue.
    fn end(&mut self, end: &RunEnd) -> Result<()> {
        self.progress.finish();
        let seconds = end.seconds;
        let where_ = end
            .checkpoint
            .map_or("no checkpoint".to_string(), |c| c.display().to_string());
        match (end.status, end.test) {
            (Status::Completed, None) => {
                tracing::info!("done in {seconds:.1} s; weights in {where_}")
            }
            (Status::Completed, Some(test)) => tracing::info!(
                "done in {seconds:.1} s: test {}; waited {:.2} s for data in total; weights in {where_}",
                describe(test),
                end.data_wait_seconds,
            ),
            // The error itself reaches the caller.
            (Status::Failed, _) => {}
            (status, _) => tracing::warn!(
                "{status} at step {} of {}; saved {where_}; continue with: kiln train --resume {}",
                end.step,
                end.total_steps,
                end.run_dir.display()
            ),
        }
        Ok(())
    }
}

/// `loss 0.1234 accuracy 0.9000`: an evaluation for the log.
pub fn describe(r: &EvalResult) -> String {
    let metrics: String = r
        .metrics
        .iter()
        .map(|(name, v)| format!(" {name} {v:.4}"))
        .collect();
    format!("loss {:.4}{metrics}", r.loss)
}

/// A metric's name on the progress line (`acc` for the accuracy).
fn short_name(name: &str) -> &str {
    match name {
        "accuracy" => "acc",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn an_evaluation_reads_as_its_loss_and_metrics() {
        let r = EvalResult {
            loss: 0.123449,
            metrics: BTreeMap::from([("accuracy".into(), 0.9), ("r2".into(), 0.5)]),
            samples: 10,
        };
        assert_eq!(describe(&r), "loss 0.1234 accuracy 0.9000 r2 0.5000");
        assert_eq!((short_name("accuracy"), short_name("r2")), ("acc", "r2"));
    }
}
