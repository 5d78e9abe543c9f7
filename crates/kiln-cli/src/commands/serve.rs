//! `kiln serve`: serve Kiln exports over HTTP (the Open Inference Protocol v2, Prometheus
//! metrics) until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use kiln_serve::{Batching, DriftOptions, Exported, Limits, ServeOptions};

use super::{on_device, OnDevice};
use crate::args::BackendArgs;

/// Serve Kiln exports over HTTP with the Open Inference Protocol v2 (KServe, Triton, Seldon):
/// `/v2/models/{name}/infer`, `/v2/models/{name}/generate` for language models, health and
/// metadata routes, and Prometheus metrics on `/metrics`. Concurrent requests for a model are
/// batched. SIGTERM stops accepting, answers the requests in flight and exits 0.
#[derive(clap::Args)]
pub struct Args {
    /// Export directories (from `kiln export --format kiln`).
    #[arg(required = true, value_name = "EXPORT")]
    exports: Vec<PathBuf>,
    /// The name each export is served as, in the order of the exports (default: the export's
    /// directory name).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// The address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: any free port; the ready line on stdout names it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The most samples of concurrent requests one forward pass runs (1: no batching).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long the first request of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 2)]
    max_delay_ms: u64,
    /// Inference requests answered at once, over all models; more get 503.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// A request not answered within this many milliseconds gets 504.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// The largest request body, in MiB; larger gets 413.
    #[arg(long, default_value_t = 16)]
    max_body_mb: usize,
    /// Drift: the samples (or prompt tokens) each model's sliding window keeps; 0 turns drift
    /// monitoring off.
    #[arg(long, default_value_t = 1000)]
    drift_window: usize,
    /// Drift: the samples a window needs before it is compared with the export's reference.
    #[arg(long, default_value_t = 100)]
    drift_min_samples: usize,
    /// Drift: the significance level of a window's report, divided among its tests
    /// (Bonferroni); also the level of the feedback's accuracy test.
    #[arg(long, default_value_t = 0.05)]
    drift_alpha: f64,
    /// Drift: the share of drifting features at which a window drifts.
    #[arg(long, default_value_t = 0.5)]
    drift_share: f64,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Serves until SIGTERM or Ctrl-C.
pub fn exec(args: Args) -> Result<()> {
    if !args.names.is_empty() && args.names.len() != args.exports.len() {
        bail!(
            "--name is given {} times for {} exports; name every export, in order, or none",
            args.names.len(),
            args.exports.len()
        );
    }
    for (flag, value) in [
        ("--max-batch", args.max_batch),
        ("--max-in-flight", args.max_in_flight),
        ("--max-body-mb", args.max_body_mb),
        ("--timeout-ms", args.timeout_ms as usize),
    ] {
        if value == 0 {
            bail!("{flag} 0: must be at least 1");
        }
    }
    if !(args.drift_alpha > 0.0 && args.drift_alpha < 1.0) {
        bail!(
            "--drift-alpha {}: give a significance level between 0 and 1 (default 0.05)",
            args.drift_alpha
        );
    }
    if !(args.drift_share > 0.0 && args.drift_share <= 1.0) {
        bail!(
            "--drift-share {}: give a share above 0 and at most 1 (default 0.5)",
            args.drift_share
        );
    }
    if args.drift_window > 0 && !(2..=args.drift_window).contains(&args.drift_min_samples) {
        bail!(
            "--drift-min-samples {}: give at least 2 and at most --drift-window ({})",
            args.drift_min_samples,
            args.drift_window
        );
    }
    let mut exports = Vec::new();
    for (i, dir) in args.exports.iter().enumerate() {
        let name = match args.names.get(i) {
            Some(name) => name.clone(),
            None => default_name(dir)?,
        };
        if name.is_empty() || name.contains('/') {
            bail!("--name {name:?}: a model name is not empty and has no '/'");
        }
        exports.push(Exported {
            name,
            dir: dir.clone(),
        });
    }
    let backend = args.backend.kind()?.resolve()?;
    let options = ServeOptions {
        address: format!("{}:{}", args.host, args.port),
        batching: Batching {
            max_batch: args.max_batch,
            max_delay: Duration::from_millis(args.max_delay_ms),
        },
        limits: Limits {
            max_in_flight: args.max_in_flight,
            timeout: Duration::from_millis(args.timeout_ms),
            max_body_bytes: args.max_body_mb << 20,
        },
        backend: backend.name().to_string(),
        drift: DriftOptions {
            window: args.drift_window,
            min_samples: args.drift_min_samples,
            options: kiln_drift::Options {
                alpha: args.drift_alpha,
                share: args.drift_share,
            },
        },
    };
    on_device(backend, Serve { exports, options })
}

/// The directory's own name (`exports/mnist/` serves as `mnist`).
fn default_name(dir: &std::path::Path) -> Result<String> {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match absolute.file_name().and_then(|n| n.to_str()) {
        Some(name) => Ok(name.to_string()),
        None => bail!(
            "{}: cannot name the model after this directory; give --name",
            dir.display()
        ),
    }
}

struct Serve {
    exports: Vec<Exported>,
    options: ServeOptions,
}

impl OnDevice for Serve {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        kiln_serve::serve::<B>(self.exports, self.options, device)
    }
}
