//! `kiln`: train, evaluate and sample models from config files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_core::config::RESUMABLE_KEYS;
use kiln_core::rundir::{find_run_config, resolve_weights};
use kiln_core::{dispatch, BackendKind, BackendTask, Config};
use kiln_models::Model;
use kiln_train::checkpoint::is_checkpoint_dir;
use kiln_train::generate::{generate, Sampling};
use kiln_train::{evaluate, weights, ResumeFrom, RunData, TrainOptions};

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
    /// Train the run described by a TOML config, or continue a run from a checkpoint.
    Train {
        /// The run's config file (see configs/).
        #[arg(required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Continue a run: its directory (the newest checkpoint that verifies) or one of its
        /// step-<N> directories. The config is the run's own config.toml.
        #[arg(long, value_name = "RUN_DIR|STEP_DIR", conflicts_with = "config")]
        resume: Option<PathBuf>,
        /// With --resume: accept --set overrides that change the maths (and a checkpoint
        /// written under a different config).
        #[arg(long, requires = "resume")]
        force: bool,
        /// Stop after this step with a checkpoint, as a preemption would; continue later with
        /// --resume.
        #[arg(long, value_name = "STEP")]
        until_step: Option<usize>,
        #[command(flatten)]
        backend: BackendArg,
        /// Override a config value: --set optimizer.lr=3e-4 (repeatable). With --resume only
        /// keys that do not change the maths, unless --force.
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
    /// Generate text with a trained GPT, streamed to stdout.
    Generate {
        /// A run directory (its latest checkpoint), a step-<N> directory or a .safetensors file
        /// inside a run directory.
        run: PathBuf,
        /// Text to continue (default: start a new text).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Number of tokens (characters) to generate.
        #[arg(long, default_value_t = 500)]
        max_tokens: usize,
        /// Sampling temperature: below 1 is more conservative, 0 always picks the likeliest.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample among the k likeliest tokens only.
        #[arg(long)]
        top_k: Option<usize>,
        /// Seed of the sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        backend: BackendArg,
    },
    /// Tokenize a UTF-8 text file by characters into a token file (little-endian u16/u32 ids)
    /// plus a .json sidecar with the vocabulary, for `data.format = "tokens"`.
    Tokenize {
        /// The text file.
        input: PathBuf,
        /// The token file to write, e.g. datasets/text/shakespeare.bin (the sidecar is .json).
        #[arg(long)]
        out: PathBuf,
        /// Element type of the token file.
        #[arg(long, default_value = "u16")]
        dtype: String,
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
            resume,
            force,
            until_step,
            backend,
            set,
        } => {
            let backend = backend.kind()?;
            let (config, resume) = match (config, resume) {
                (_, Some(path)) => resume_config(&path, &set, force)?,
                (Some(path), None) => (Config::load(&path, &set)?, None),
                (None, None) => bail!("give a config file, or --resume RUN_DIR"),
            };
            if until_step == Some(0) {
                bail!("--until-step: must be at least 1");
            }
            let options = TrainOptions {
                resume,
                force,
                stop: stop_on_signals()?,
                until_step,
            };
            let summary = dispatch(backend, TrainTask { config, options })??;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Eval {
            weights,
            split,
            backend,
        } => {
            let backend = backend.kind()?;
            let (file, _, config) = trained_run(&weights)?;
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
        Command::Generate {
            run,
            prompt,
            max_tokens,
            temperature,
            top_k,
            seed,
            backend,
        } => {
            let backend = backend.kind()?;
            let (file, run_dir, config) = trained_run(&run)?;
            let sampling = Sampling {
                prompt,
                max_tokens,
                temperature,
                top_k,
                seed,
            };
            dispatch(
                backend,
                GenerateTask {
                    config,
                    run_dir,
                    file,
                    sampling,
                },
            )??;
        }
        Command::Tokenize { input, out, dtype } => {
            let dtype = dtype
                .parse::<kiln_data::TokenDtype>()
                .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
            let summary = kiln_data::tokenize_file(&input, &out, dtype)?;
            println!("{}", serde_json::to_string(&summary)?);
        }
    }
    Ok(())
}

/// The weights file that `path` (a run, a step directory or a weights file) names, the run
/// directory holding it and the run's config.
fn trained_run(path: &Path) -> Result<(PathBuf, PathBuf, Config)> {
    let file = resolve_weights(path)?;
    let config_path = find_run_config(&file)?;
    let config = Config::load(&config_path, &[])
        .with_context(|| format!("reading the run config of {}", path.display()))?;
    let run_dir = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    Ok((file, run_dir, config))
}

/// The config of a run being resumed from `path`, with `overrides` checked against the keys
/// that may change without changing the maths.
fn resume_config(
    path: &Path,
    overrides: &[String],
    force: bool,
) -> Result<(Config, Option<ResumeFrom>)> {
    if !path.exists() {
        bail!(
            "--resume {}: does not exist; give a run directory or one of its step-<N> directories",
            path.display()
        );
    }
    let from = if is_checkpoint_dir(path) {
        ResumeFrom::Checkpoint(path.to_path_buf())
    } else {
        ResumeFrom::Latest(path.to_path_buf())
    };
    let config_path = from.run_dir().join("config.toml");
    if !config_path.is_file() {
        bail!(
            "--resume {}: {} is not a Kiln run directory (it has no config.toml)",
            path.display(),
            from.run_dir().display()
        );
    }
    let saved = Config::load(&config_path, &[]).with_context(|| {
        format!(
            "reading the config of the run to resume ({})",
            path.display()
        )
    })?;
    let config = Config::load_for_resume(&config_path, overrides)?;
    let changed = saved.changed_keys(&config);
    if let Some(key) = changed
        .iter()
        .find(|k| matches!(k.as_str(), "run.name" | "run.output_dir" | "run.overwrite"))
    {
        bail!(
            "--set {key}: a resumed run continues in {}; {key} cannot change",
            from.run_dir().display()
        );
    }
    let maths: Vec<&String> = changed
        .iter()
        .filter(|k| !RESUMABLE_KEYS.contains(&k.as_str()))
        .collect();
    if !maths.is_empty() {
        let keys = maths
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if !force {
            bail!(
                "--set {keys}: changes what the run computes, so the resumed run would not continue the same run; without --force only these keys may change: {}",
                RESUMABLE_KEYS.join(", ")
            );
        }
        tracing::warn!(
            "--force: resuming with changed {keys}; the run will not match an uninterrupted one"
        );
    }
    Ok((config, Some(from)))
}

/// SIGINT and SIGTERM set the returned flag: the loop finishes its step, writes a checkpoint and
/// exits 0. A second signal exits at once (status 128 + signal).
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    Ok(stop)
}

struct TrainTask {
    config: Config,
    options: TrainOptions,
}

impl BackendTask for TrainTask {
    type Output = Result<kiln_train::TrainSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Self::Output {
        kiln_train::train::<B>(&self.config, device, backend, self.options)
    }
}

struct GenerateTask {
    config: Config,
    run_dir: PathBuf,
    file: PathBuf,
    sampling: Sampling,
}

impl BackendTask for GenerateTask {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Self::Output {
        let mut out = std::io::stdout().lock();
        generate::<B::InnerBackend>(
            &self.config,
            &self.run_dir,
            &self.file,
            &self.sampling,
            &device,
            &mut out,
        )?;
        Ok(())
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
    let data = RunData::load(&task.config)?;
    let (name, split) = match task.split {
        Split::Test => ("test", kiln_train::Split::Test),
        Split::Valid => ("valid", kiln_train::Split::Valid),
    };
    if !data.has(split) {
        bail!(
            "the run's data has no {name} split (text and token data hold out a validation split only: use --split valid)"
        );
    }
    let model = Model::<B>::new(
        &task.config.model,
        &data.shape(),
        task.config.train.precision,
        task.config.run.seed,
        &device,
    )?;
    let model = weights::load(model, &task.file)?;
    let r = evaluate(&model, data.eval_batches(split, &task.config), &device);
    Ok(serde_json::json!({
        "split": name, "loss": r.loss, "accuracy": r.accuracy, "samples": r.samples,
        "weights": task.file,
    }))
}
