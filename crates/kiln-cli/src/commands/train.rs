//! `kiln train`: a run from a config file, or the continuation of one from a checkpoint.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use kiln_core::layout::CONFIG_FILE;
use kiln_core::{dispatch_on, BackendKind, BackendTask, Config};
use kiln_dist::MpiJob;
use kiln_models::ModelConfig;
use kiln_train::{resume_config, TrainOptions, TrainSummary};

use super::stop_on_signals;
use crate::args::BackendArgs;

/// Train the run described by a TOML config, or continue a run from a checkpoint.
#[derive(clap::Args)]
pub struct Args {
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
    backend: BackendArgs,
    /// Train data-parallel on these devices of this machine, one worker thread each
    /// (burn-collective): cuda:0,cuda:1 / wgpu:0,wgpu:1 / cpu,cpu. The effective batch is
    /// data.batch_size x devices.
    #[arg(long, value_name = "DEVICE,...", value_delimiter = ',')]
    devices: Vec<String>,
    /// Override a config value: --set optimizer.lr=3e-4 (repeatable). With --resume only
    /// keys that do not change the maths, unless --force.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Start a GPT from a Hugging Face folder (GPT-2 or Llama): its architecture, weights and
    /// tokenizer. The same as --set model.init_from="DIR".
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
}

/// Trains; rank 0 prints the run's summary as JSON.
pub fn exec(args: Args) -> Result<()> {
    let backend = args.backend.kind()?.resolve()?;
    let (mut config, resume, file) = match (args.config, &args.resume) {
        (_, Some(path)) => {
            let (config, from) = resume_config(path, &args.set, args.force)?;
            (config, Some(from), path.join(CONFIG_FILE))
        }
        (Some(path), None) => {
            let mut set = args.set.clone();
            if let Some(dir) = &args.init_from {
                let dir = serde_json::to_string(&dir.display().to_string())?;
                set.push(format!("model.init_from={dir}"));
            }
            let mut config = Config::load(&path, &set)?;
            // A fresh run from a Hugging Face folder takes its architecture (and tokenizer).
            kiln_hf::import::fill_config(&mut config)
                .with_context(|| path.display().to_string())?;
            (config, None, path)
        }
        (None, None) => bail!("give a config file, or --resume RUN_DIR"),
    };
    // The run's config.toml records the model's own section, its defaults filled in.
    ModelConfig::resolve(&mut config).with_context(|| file.display().to_string())?;
    if args.until_step == Some(0) {
        bail!("--until-step: must be at least 1");
    }
    // A tracker that is on but names no server fails now, before anything is written.
    kiln_train::tracked::mlflow_server(&config)?;
    let stop = stop_on_signals()?;
    let timeout = Duration::from_secs_f64(config.distributed.timeout_secs);
    let mpi = kiln_dist::join_mpi_job(timeout, &stop)?;
    let devices = match mpi {
        Some(_) => kiln_dist::rank_devices(
            args.devices,
            backend == BackendKind::Cuda,
            kiln_dist::local_rank(|k| std::env::var(k).ok()),
        )?,
        None => args.devices,
    };
    let options = TrainOptions {
        resume,
        force: args.force,
        stop,
        until_step: args.until_step,
        ..Default::default()
    };
    let task = Train {
        config,
        options,
        mpi,
    };
    let (summary, lead) = dispatch_on(backend, &devices, task)??;
    if lead {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

struct Train {
    config: Config,
    options: TrainOptions,
    mpi: Option<MpiJob>,
}

impl BackendTask for Train {
    /// The summary, and whether this worker is rank 0 (the one that reports).
    type Output = Result<(TrainSummary, bool)>;
    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        backend: BackendKind,
    ) -> Self::Output {
        kiln_train::train_as_launched::<B>(&self.config, devices, backend, self.options, self.mpi)
    }
}
