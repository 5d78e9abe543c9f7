//! Inference latency of a Kiln export (the export benchmark's Kiln side; `run_export.py` runs it
//! next to onnxruntime and writes benches/results/export.{md,json}).
//!
//! `kiln-export-bench --export DIR [--batch 256] [--repeats 30] [--warmup 3]
//! [--backend flex|ndarray] [--threads N]` loads the export as `kiln predict` does (quantized
//! weights dequantized to float32 at load), builds one fixed batch and prints one JSON line with
//! the median and minimum milliseconds per batch.
//!
//! The batch: for a classifier, the first `--batch` images of the Fashion-MNIST test split
//! (`--images`, default datasets/fashion-mnist/t10k-images-idx3-ubyte.gz), as pixel / 255; for a
//! GPT, `--batch` consecutive windows of `block_size` tokens from the start of `--text` (default
//! datasets/text/shakespeare.txt) encoded with the export's tokenizer.
//!
//! One timed pass is what serving a batch costs: (classifiers) the manifest's standardization on
//! the host, the copy to the device, the forward pass, the softmax (the ONNX graph computes it
//! too), and reading the outputs back to the host, which also waits for the work to finish.
//! `--threads N` sets `RAYON_NUM_THREADS` (the CPU backends' thread pool) before any work.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use kiln_core::{dispatch, BackendKind, BackendTask};
use kiln_export::predict::{load, Task};
use kiln_models::{Input, Model};

struct Bench {
    export: PathBuf,
    batch: usize,
    repeats: usize,
    warmup: usize,
    images: PathBuf,
    text: PathBuf,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| -> Option<String> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |flag: &str, default: usize| -> Result<usize> {
        get(flag).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("{flag} {v}: expected a whole number"))
        })
    };
    if let Some(threads) = get("--threads") {
        let n: usize = threads
            .parse()
            .with_context(|| format!("--threads {threads}: expected a whole number"))?;
        ensure!(n > 0, "--threads: give at least 1");
        // Before any thread pool exists: nothing has run yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bench = Bench {
        export: PathBuf::from(get("--export").context("--export DIR is required")?),
        batch: num("--batch", 256)?,
        repeats: num("--repeats", 30)?,
        warmup: num("--warmup", 3)?,
        images: get("--images").map_or_else(
            || root.join("datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
            PathBuf::from,
        ),
        text: get("--text")
            .map_or_else(|| root.join("datasets/text/shakespeare.txt"), PathBuf::from),
    };
    ensure!(bench.batch > 0, "--batch: give at least 1");
    ensure!(bench.repeats > 0, "--repeats: give at least 1");
    let backend: BackendKind = get("--backend").as_deref().unwrap_or("flex").parse()?;
    let out = dispatch(backend, bench)??;
    println!("{out}");
    Ok(())
}

impl BackendTask for Bench {
    type Output = Result<serde_json::Value>;

    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        backend: BackendKind,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("dispatch gives a device");
        measure::<B::InnerBackend>(&self, &device, backend)
    }
}

/// The fixed batch, on the host.
enum HostBatch {
    Features {
        x: Vec<f32>,
        features: usize,
        standardize: Option<(Vec<f32>, Vec<f32>)>,
    },
    Tokens {
        ids: Vec<i64>,
        t: usize,
    },
}

fn measure<B: Backend>(
    bench: &Bench,
    device: &B::Device,
    backend: BackendKind,
) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let loaded = load::<B>(&bench.export, device)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let n = bench.batch;
    let host = match (&loaded.task, &loaded.model) {
        (
            Task::Samples {
                sample_shape,
                standardize,
                ..
            },
            _,
        ) => {
            let features: usize = sample_shape.iter().product();
            let (pixels, shape) = kiln_data::load_idx_images(&bench.images)?;
            ensure!(
                shape.iter().product::<usize>() == features,
                "{}: images of shape {shape:?}, the model takes {sample_shape:?}",
                bench.images.display()
            );
            ensure!(
                pixels.len() >= n * features,
                "{}: fewer than {n} images",
                bench.images.display()
            );
            HostBatch::Features {
                x: pixels[..n * features].to_vec(),
                features,
                standardize: standardize.clone(),
            }
        }
        (Task::Language { tokenizer }, Model::Gpt(gpt)) => {
            let t = gpt.block_size;
            let text = std::fs::read_to_string(&bench.text)
                .with_context(|| format!("cannot read {}", bench.text.display()))?;
            // Enough characters for n windows (a character is one token).
            let head: String = text.chars().take(n * t).collect();
            let ids = tokenizer.encode(&head).with_context(|| {
                format!("{}: not encodable by the export", bench.text.display())
            })?;
            ensure!(
                ids.len() >= n * t,
                "{}: fewer than {} tokens",
                bench.text.display(),
                n * t
            );
            HostBatch::Tokens {
                ids: ids[..n * t].iter().map(|&i| i64::from(i)).collect(),
                t,
            }
        }
        (Task::Language { .. }, _) => bail!("a language-model export without a GPT"),
    };

    // One batch end to end: host input -> device -> forward -> host output.
    let pass = || -> Result<usize> {
        match &host {
            HostBatch::Features {
                x,
                features,
                standardize,
            } => {
                let mut x = x.clone();
                if let Some((mean, std)) = standardize {
                    standardize_rows(&mut x, *features, mean, std);
                }
                let input = Tensor::<B, 2>::from_data(TensorData::new(x, [n, *features]), device);
                let logits = loaded.model.forward(Input::Features(input));
                let probs = softmax(logits.clone(), 1);
                let logits = logits.into_data();
                let probs = probs.into_data();
                Ok(logits.num_elements() + probs.num_elements())
            }
            HostBatch::Tokens { ids, t } => {
                let input =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [n, *t]), device);
                let logits = loaded.model.forward(Input::Tokens(input));
                Ok(logits.into_data().num_elements())
            }
        }
    };
    let mut outputs = 0;
    for _ in 0..bench.warmup {
        outputs = pass()?;
    }
    let mut ms = Vec::with_capacity(bench.repeats);
    for _ in 0..bench.repeats {
        let start = Instant::now();
        outputs = pass()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    let (kind, tokens) = match &host {
        HostBatch::Features { .. } => ("classifier", None),
        HostBatch::Tokens { t, .. } => ("gpt", Some(n * t)),
    };
    let mut out = serde_json::json!({
        "framework": "kiln",
        "export": bench.export.display().to_string(),
        "scheme": loaded.manifest.quantization["scheme"],
        "task": kind,
        "backend": backend.name(),
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "batch": n,
        "warmup": bench.warmup,
        "repeats": bench.repeats,
        "median_ms": median,
        "min_ms": sorted[0],
        "all_ms": ms,
        "load_ms": load_ms,
        "output_values": outputs,
    });
    if let Some(tokens) = tokens {
        out["tokens_per_batch"] = serde_json::json!(tokens);
        out["tokens_per_sec"] = serde_json::json!(tokens as f64 / (median / 1e3));
    }
    Ok(out)
}

/// `(x - mean) / std` per feature (or with one global pair), as `kiln predict` does; a standard
/// deviation of 0 counts as 1.
fn standardize_rows(x: &mut [f32], features: usize, mean: &[f32], std: &[f32]) {
    for row in x.chunks_exact_mut(features) {
        for (j, v) in row.iter_mut().enumerate() {
            let k = if mean.len() == 1 { 0 } else { j };
            let s = if std[k] == 0.0 { 1.0 } else { 1.0 / std[k] };
            *v = (*v - mean[k]) * s;
        }
    }
}
