//! `kiln`: train and evaluate models from config files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_core::rundir::{find_run_config, resolve_weights};
use kiln_core::{dispatch, BackendKind, BackendTask, Config};
use kiln_models::Classifier;
use kiln_train::{evaluate, weights, Splits};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train deep-learning models from config files on CPUs and GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the run described by a TOML config.
    Train {
        /// The run's config file (see configs/).
        config: PathBuf,
        #[command(flatten)]
        backend: BackendArg,
        /// Override a config value: --set optimizer.lr=3e-4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Evaluate trained weights; prints one JSON object with loss and accuracy.
    Eval {
        /// A run directory (its latest checkpoint), a step-<N> directory or a .safetensors file
        /// inside a run directory.
        weights: PathBuf,
        /// Which split to evaluate.
        #[arg(long, value_enum, default_value_t = Split::Test)]
        split: Split,
        #[command(flatten)]
        backend: BackendArg,
    },
}

#[derive(clap::Args)]
struct BackendArg {
    /// auto (CUDA if compiled in and a GPU is present, else flex), flex, ndarray, wgpu or cuda.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    backend: String,
}

impl BackendArg {
    /// Parsed here rather than by clap so that a bad name gets Kiln's one-line error.
    fn kind(&self) -> Result<BackendKind> {
        self.backend
            .parse()
            .map_err(|e| anyhow::anyhow!("--backend: {e}"))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Split {
    Test,
    Valid,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            config,
            backend,
            set,
        } => {
            let backend = backend.kind()?;
            let config = Config::load(&config, &set)?;
            let summary = dispatch(backend, TrainTask { config })??;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Eval {
            weights,
            split,
            backend,
        } => {
            let backend = backend.kind()?;
            let file = resolve_weights(&weights)?;
            let config_path = find_run_config(&file)?;
            let config = Config::load(&config_path, &[])
                .with_context(|| format!("reading the run config of {}", weights.display()))?;
            let result = dispatch(
                backend,
                EvalTask {
                    config,
                    file,
                    split,
                },
            )??;
            println!("{}", serde_json::to_string(&result)?);
        }
    }
    Ok(())
}

struct TrainTask {
    config: Config,
}

impl BackendTask for TrainTask {
    type Output = Result<kiln_train::TrainSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Self::Output {
        kiln_train::train::<B>(&self.config, device, backend)
    }
}

struct EvalTask {
    config: Config,
    file: PathBuf,
    split: Split,
}

impl BackendTask for EvalTask {
    type Output = Result<serde_json::Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Self::Output {
        eval::<B::InnerBackend>(self, device)
    }
}

fn eval<B: Backend>(task: EvalTask, device: B::Device) -> Result<serde_json::Value> {
    let splits = Splits::load(&task.config)?;
    let (name, data) = match task.split {
        Split::Test => ("test", &splits.test),
        Split::Valid => ("valid", &splits.valid),
    };
    let model = Classifier::<B>::new(
        &task.config.model,
        &splits.train.sample_shape,
        splits.train.num_classes,
        task.config.run.seed,
        &device,
    )?;
    let model = weights::load(model, &task.file)?;
    let batch = task
        .config
        .data
        .eval_batch_size
        .unwrap_or(task.config.data.batch_size);
    let r = evaluate(&model, data, batch, &device);
    Ok(serde_json::json!({
        "split": name, "loss": r.loss, "accuracy": r.accuracy, "samples": r.samples,
        "weights": task.file,
    }))
}
