//! One thread per served model owns the model on its device and runs what the HTTP side
//! queues: requests for samples are batched (dynamic batching), generations run one at a time.
//!
//! The worker takes the first queued job, then, while other requests for the model are in flight,
//! waits up to `max_delay` for more until the batch holds `max_batch` samples (a request alone
//! runs at once: waiting could not fill its batch); one forward pass runs them all and each
//! request gets its own rows back. A request whose caller gave up (timed out) is skipped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use kiln_export::drift::{no_reference, read_reference};
use kiln_export::predict::{self, forward_samples, Loaded, Outputs};
use kiln_infer::generate::{generate_with, Generation};
use kiln_models::Model;
use tokio::sync::oneshot;

use crate::drift::{DriftOptions, Monitor};
use crate::endpoint::{Endpoint, Work};
use crate::metrics::Metrics;
use crate::routes::Pending;

/// A request waiting for the worker.
pub struct Job {
    /// What to run.
    pub work: Work,
    /// When it was queued (for the queue-time histogram).
    pub queued: Instant,
    /// Where the answer goes; a closed channel means the caller gave up.
    pub reply: oneshot::Sender<Result<Done, String>>,
    /// Counts the request as pending until the worker takes it.
    pub pending: Option<Pending>,
    /// A streamed generation: where each piece of text goes as it is generated.
    pub stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// A finished job.
pub enum Done {
    /// The job's rows of the batch's outputs.
    Samples(Outputs),
    /// The generated text.
    Generation(Generation),
}

/// How the worker batches.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// The most samples in one forward pass (1: no batching).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_delay: Duration,
}

/// How a worker batches and watches for drift.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// Batching of concurrent requests.
    pub batching: Batching,
    /// Drift monitoring.
    pub drift: DriftOptions,
}

/// What a worker takes its jobs from.
pub struct Queue {
    /// The jobs, in arrival order.
    pub jobs: Receiver<Job>,
    /// Requests for the model being read or queued ([`Job::pending`]).
    pub pending: Arc<AtomicUsize>,
}

/// Loads the export in `dir` on `device` and serves `queue` until every sender is dropped.
/// `loaded` receives the model's endpoint, or why it could not load, before the first job runs.
pub fn run<B: Backend>(
    name: String,
    dir: PathBuf,
    device: B::Device,
    queue: Queue,
    options: WorkerOptions,
    metrics: Arc<Metrics>,
    loaded: std::sync::mpsc::Sender<anyhow::Result<Endpoint>>,
) {
    let WorkerOptions { batching, drift } = options;
    let model = match predict::load::<B>(&dir, &device) {
        Ok(model) => model,
        Err(e) => {
            let _ = loaded.send(Err(e.context(format!("model `{name}`"))));
            return;
        }
    };
    let reference = match read_reference(&dir, &model.manifest) {
        Ok(Some(reference)) => Ok(reference),
        Ok(None) => Err(no_reference(&model.manifest)),
        Err(e) => {
            tracing::warn!("model `{name}`: drift is unavailable: {e:#}");
            Err(format!("{e:#}"))
        }
    };
    let monitor = Arc::new(Monitor::new(reference, drift));
    let _ = loaded.send(Ok(Endpoint::of(&name, &model, monitor.clone())));
    let worker = Worker {
        name,
        model,
        device,
        metrics,
        monitor,
    };
    let Queue { jobs, pending } = queue;
    let mut carried: Option<Job> = None;
    while let Some(mut first) = carried.take().or_else(|| jobs.recv().ok()) {
        first.pending = None;
        if first.reply.is_closed() {
            continue;
        }
        match first.work {
            Work::Generate(_) => worker.generate(first),
            Work::Samples { rows, .. } => {
                let mut batch = vec![first];
                let mut samples = rows;
                let deadline = Instant::now() + batching.max_delay;
                while samples < batching.max_batch {
                    // Wait for more only while other requests for this model are being read or
                    // are queued: alone, a request runs at once.
                    let others = pending.load(Ordering::SeqCst) > 0;
                    let wait = if others {
                        deadline.saturating_duration_since(Instant::now())
                    } else {
                        Duration::ZERO
                    };
                    let mut next = match jobs.recv_timeout(wait) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    };
                    next.pending = None;
                    match next.work {
                        Work::Samples { rows, .. } if samples + rows <= batching.max_batch => {
                            samples += rows;
                            batch.push(next);
                        }
                        _ => {
                            carried = Some(next);
                            break;
                        }
                    }
                }
                worker.samples(batch);
            }
        }
    }
}

struct Worker<B: Backend> {
    name: String,
    model: Loaded<B>,
    device: B::Device,
    metrics: Arc<Metrics>,
    monitor: Arc<Monitor>,
}

impl<B: Backend> Worker<B> {
    /// One forward pass over the samples of `batch` (requests whose callers gave up left out).
    fn samples(&self, mut batch: Vec<Job>) {
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut x = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        for job in &mut batch {
            self.metrics.observe_queue(&self.name, started - job.queued);
            if let Work::Samples { x: values, rows: n } = &mut job.work {
                x.append(values);
                rows.push(*n);
            }
        }
        let total: usize = rows.iter().sum();
        let features = self.monitor.features(&x, total);
        let result = guarded(|| forward_samples(&self.model, x, total, &self.device));
        self.metrics
            .observe_batch(&self.name, total, started.elapsed());
        match result {
            Ok(outputs) => {
                self.monitor.observe(&features, &outputs);
                for (job, part) in batch.into_iter().zip(split(outputs, &rows)) {
                    let _ = job.reply.send(Ok(Done::Samples(part)));
                }
            }
            Err(e) => {
                tracing::error!("model `{}`: inference failed: {e:#}", self.name);
                for job in batch {
                    let _ = job.reply.send(Err(format!("inference failed: {e:#}")));
                }
            }
        }
    }

    /// One generation.
    fn generate(&self, job: Job) {
        let started = Instant::now();
        self.metrics.observe_queue(&self.name, started - job.queued);
        let Work::Generate(sampling) = &job.work else {
            return;
        };
        let Model::Gpt(gpt) = &self.model.model else {
            let _ = job.reply.send(Err("not a language model".into()));
            return;
        };
        let result = match &self.model.task {
            predict::Task::Language { tokenizer } => guarded(|| {
                if self.monitor.enabled() {
                    if let Ok(ids) = tokenizer.encode(&sampling.prompt) {
                        self.monitor.observe_tokens(&ids);
                    }
                }
                let mut out = Pieces {
                    reply: &job.reply,
                    stream: job.stream.as_ref(),
                    prompt: sampling.prompt.len(),
                    bytes: Vec::new(),
                };
                generate_with(gpt, tokenizer, sampling, &self.device, &mut out)
            }),
            predict::Task::Samples { .. } => Err(anyhow::anyhow!("not a language model")),
        };
        self.metrics.observe_batch(&self.name, 1, started.elapsed());
        let reply = match result {
            Ok(generation) => {
                self.metrics
                    .generated_tokens(&self.name, generation.tokens.len());
                Ok(Done::Generation(generation))
            }
            Err(e) => Err(format!("{e:#}")),
        };
        let _ = job.reply.send(reply);
    }
}

/// Where a generation writes its text (the prompt first, then each token's): pieces of text for
/// a streamed request, and an error as soon as the request is abandoned (its caller timed out or
/// went away), which stops the generation at its next token.
struct Pieces<'a> {
    reply: &'a oneshot::Sender<Result<Done, String>>,
    stream: Option<&'a tokio::sync::mpsc::UnboundedSender<String>>,
    /// Bytes of the prompt still to skip.
    prompt: usize,
    /// Bytes not yet sent: the end of a character cut between writes.
    bytes: Vec<u8>,
}

impl std::io::Write for Pieces<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let gone = self.stream.is_some_and(|s| s.is_closed());
        if self.reply.is_closed() || gone {
            return Err(std::io::Error::other("the request was abandoned"));
        }
        if self.stream.is_some() {
            let skip = self.prompt.min(bytes.len());
            self.prompt -= skip;
            self.bytes.extend_from_slice(&bytes[skip..]);
        }
        Ok(bytes.len())
    }

    /// The generation flushes after each token's text: send what is whole of it (the final
    /// remainder and newline, written without a flush, reach the client with the last event).
    fn flush(&mut self) -> std::io::Result<()> {
        let Some(stream) = self.stream else {
            return Ok(());
        };
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(text) => text.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let text = String::from_utf8_lossy(&self.bytes[..valid]).into_owned();
            self.bytes.drain(..valid);
            let _ = stream.send(text);
        }
        Ok(())
    }
}

/// Runs `f`, a panic in it (a backend's) becoming an error: the worker, and with it the
/// model, keeps serving the requests after it.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = (panic.downcast_ref::<String>().map(String::as_str))
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(anyhow::anyhow!("the backend failed: {message}"))
    })
}

/// Cuts a batch's outputs into the parts of requests of `rows` samples each.
fn split(outputs: Outputs, rows: &[usize]) -> Vec<Outputs> {
    let total: usize = rows.iter().sum();
    let cut = |values: &[f32]| -> Vec<Vec<f32>> {
        let width = values.len() / total.max(1);
        let mut at = 0;
        rows.iter()
            .map(|&n| {
                let part = values[at * width..(at + n) * width].to_vec();
                at += n;
                part
            })
            .collect()
    };
    match outputs {
        Outputs::Values(v) => cut(&v).into_iter().map(Outputs::Values).collect(),
        Outputs::Classes {
            logits,
            probabilities,
        } => cut(&logits)
            .into_iter()
            .zip(cut(&probabilities))
            .map(|(logits, probabilities)| Outputs::Classes {
                logits,
                probabilities,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_back_into_its_requests() {
        let outputs = Outputs::Classes {
            logits: (0..12).map(|v| v as f32).collect(),
            probabilities: (12..24).map(|v| v as f32).collect(),
        };
        let parts = split(outputs, &[1, 3, 2]);
        let Outputs::Classes {
            logits,
            probabilities,
        } = &parts[1]
        else {
            panic!("classes")
        };
        assert_eq!(logits, &[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(probabilities, &[14.0, 15.0, 16.0, 17.0, 18.0, 19.0]);
        let parts = split(Outputs::Values(vec![1.0, 2.0, 3.0]), &[2, 1]);
        let Outputs::Values(v) = &parts[1] else {
            panic!("values")
        };
        assert_eq!(v, &[3.0]);
    }
}
