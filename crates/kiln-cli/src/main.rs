//! `kiln`: train, evaluate and sample models from config files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_core::config::RESUMABLE_KEYS;
use kiln_core::rundir::{find_run_config, resolve_weights};
use kiln_core::{dispatch, dispatch_on, BackendKind, BackendTask, Config};
use kiln_export::{ExportOptions, Format, Scheme, Source};
use kiln_models::{Model, ModelConfig};
use kiln_train::checkpoint::is_checkpoint_dir;
use kiln_train::generate::{generate, Sampling};
use kiln_train::{evaluate, weights, ResumeFrom, RunData, TrainData, TrainOptions};

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
        /// Train data-parallel on these devices of this machine, one worker thread each
        /// (burn-collective): cuda:0,cuda:1 / wgpu:0,wgpu:1 / cpu,cpu. The effective batch is
        /// data.batch_size x devices.
        #[arg(long, value_name = "DEVICE,...", value_delimiter = ',')]
        devices: Vec<String>,
        /// Override a config value: --set optimizer.lr=3e-4 (repeatable). With --resume only
        /// keys that do not change the maths, unless --force.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Train on this machine as N data-parallel MPI processes: runs `mpirun -np N kiln train
    /// ...` (needs a kiln built with --features mpi and OpenMPI's mpirun). On a cluster, launch
    /// `kiln train` with mpirun or srun instead.
    Launch {
        /// Number of processes (workers).
        #[arg(long, value_name = "N")]
        nproc: usize,
        /// An extra argument for mpirun (repeatable), e.g. --mpirun-arg=--host=a:2,b:2.
        #[arg(long = "mpirun-arg", value_name = "ARG", allow_hyphen_values = true)]
        mpirun_args: Vec<String>,
        /// The arguments of `kiln train`: CONFIG [--set KEY=VALUE ...] [--backend ...] or
        /// --resume RUN_DIR.
        #[arg(
            value_name = "TRAIN_ARGS",
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true
        )]
        train: Vec<String>,
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
    /// Export a trained model for serving: the Kiln format (run it with `kiln predict`), ONNX
    /// (onnxruntime, Triton) for classifiers, or a Hugging Face GPT-2 folder (transformers) for
    /// GPT; weights float32, int8 or int4. Prints a JSON summary with sizes and the metrics
    /// measured on the exported model.
    Export {
        /// A run directory (its latest checkpoint) or a step-<N> directory. Its files are
        /// verified before anything is read.
        run: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Kiln)]
        format: FormatArg,
        /// Weight quantization: none (float32), int8 (one scale per output channel) or int4
        /// (one scale per block of --block-size values of each output channel).
        #[arg(long, value_enum, default_value_t = QuantArg::None)]
        quantize: QuantArg,
        /// int4 block size: values of one output channel sharing a scale [default: 64].
        #[arg(long)]
        block_size: Option<usize>,
        /// int4: training samples (or text windows) whose activations choose each block's
        /// scale (calibration); 0 uses plain max-abs scales [default: 256].
        #[arg(long)]
        calibration_samples: Option<usize>,
        /// The export's directory (written beside it first, moved into place when complete).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing export in --out.
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        backend: BackendArg,
    },
    /// Run a Kiln export: classifiers take PNG images, IDX image files or CSV rows and print
    /// one JSON line per input; a GPT takes a prompt and prints its continuation as JSON.
    Predict {
        /// The export's directory (from `kiln export --format kiln`).
        export: PathBuf,
        /// Input files (.png, .idx / *-ubyte / .gz, .csv) for a classifier, or the prompt for
        /// a GPT.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Also print the logits (a GPT prints the logits of every prompt position instead of
        /// generating).
        #[arg(long)]
        logits: bool,
        /// GPT: number of characters to generate.
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        /// GPT: sampling temperature (0 always picks the likeliest token).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// GPT: sample among the k likeliest tokens only.
        #[arg(long)]
        top_k: Option<usize>,
        /// GPT: seed of the sampling.
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
enum FormatArg {
    Kiln,
    Onnx,
    Hf,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantArg {
    None,
    Int8,
    Int4,
}

#[derive(Clone, Copy, ValueEnum)]
enum Split {
    Test,
    Valid,
}

fn main() -> ExitCode {
    // First, before anything is allocated (kiln_core::alloc explains why).
    kiln_core::alloc::tune();
    // Data-parallel workers other than rank 0 only report warnings and errors.
    let rank = kiln_dist::launcher_rank(|k| std::env::var(k).ok()).unwrap_or(0);
    let level = if rank == 0 { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| level.into()),
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
            devices,
            set,
        } => {
            let backend = backend.kind()?.resolve()?;
            let (mut config, resume, file) = match (config, resume) {
                (_, Some(path)) => {
                    let (config, from) = resume_config(&path, &set, force)?;
                    (config, from, path.join("config.toml"))
                }
                (Some(path), None) => (Config::load(&path, &set)?, None, path),
                (None, None) => bail!("give a config file, or --resume RUN_DIR"),
            };
            // The run's config.toml records the model's own section, its defaults filled in.
            ModelConfig::resolve(&mut config).with_context(|| file.display().to_string())?;
            if until_step == Some(0) {
                bail!("--until-step: must be at least 1");
            }
            let stop = stop_on_signals()?;
            let timeout = Duration::from_secs_f64(config.distributed.timeout_secs);
            let mpi = join_mpi_job(timeout, &stop)?;
            let mut devices = devices;
            if mpi.is_some() {
                if devices.len() > 1 {
                    bail!(
                        "--devices {}: this process is one rank of an MPI job, which trains one device per process; give each rank one device (or none: a CUDA rank takes cuda:<local rank>), or run one process with several --devices",
                        devices.join(",")
                    );
                }
                if devices.is_empty() && backend == BackendKind::Cuda {
                    let local = kiln_dist::local_rank(|k| std::env::var(k).ok()).unwrap_or(0);
                    devices.push(format!("cuda:{local}"));
                }
            }
            let options = TrainOptions {
                resume,
                force,
                stop,
                until_step,
                ..Default::default()
            };
            let task = TrainTask {
                config,
                options,
                mpi,
            };
            let (summary, lead) = dispatch_on(backend, &devices, task)??;
            if lead {
                println!("{}", serde_json::to_string(&summary)?);
            }
        }
        Command::Launch {
            nproc,
            mpirun_args,
            train,
        } => return launch(nproc, &mpirun_args, &train),
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
        Command::Export {
            run,
            format,
            quantize,
            block_size,
            calibration_samples,
            out,
            overwrite,
            backend,
        } => {
            let backend = backend.kind()?;
            let format = match format {
                FormatArg::Kiln => Format::Kiln,
                FormatArg::Onnx => Format::Onnx,
                FormatArg::Hf => Format::Hf,
            };
            let scheme = match quantize {
                QuantArg::None => Scheme::None,
                QuantArg::Int8 => Scheme::Int8,
                QuantArg::Int4 => Scheme::Int4 {
                    block: block_size.unwrap_or(64),
                },
            };
            if block_size.is_some() && !matches!(scheme, Scheme::Int4 { .. }) {
                bail!("--block-size applies to --quantize int4 only");
            }
            if block_size == Some(0) {
                bail!("--block-size: must be at least 1");
            }
            if calibration_samples.is_some() && !matches!(scheme, Scheme::Int4 { .. }) {
                bail!("--calibration-samples applies to --quantize int4 only (int8 uses max-abs scales)");
            }
            // The cheap checks first: the checkpoint is read and hashed only after them.
            let (_, run_dir, config) = trained_run(&run)?;
            kiln_export::check_supported(&ModelConfig::of(&config)?, format, scheme)?;
            kiln_export::export::check_out(&out, overwrite, Some(&run_dir))?;
            let source = Source::open(&run)?;
            let opts = ExportOptions {
                format,
                scheme,
                out,
                overwrite,
                calibration_samples: calibration_samples.unwrap_or(256),
                backend: backend.resolve()?.to_string(),
            };
            let summary = dispatch(backend, ExportTask { source, opts })??;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Predict {
            export,
            inputs,
            logits,
            max_tokens,
            temperature,
            top_k,
            seed,
            backend,
        } => {
            let task = PredictTask {
                export,
                inputs,
                logits,
                sampling: Sampling {
                    prompt: String::new(),
                    max_tokens,
                    temperature,
                    top_k,
                    seed,
                },
            };
            dispatch(backend.kind()?, task)??;
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
    mpi: Option<MpiJob>,
}

impl BackendTask for TrainTask {
    /// The summary, and whether this worker is rank 0 (the one that reports).
    type Output = Result<(kiln_train::TrainSummary, bool)>;
    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        backend: BackendKind,
    ) -> Self::Output {
        match self.mpi {
            None => {
                let summary = kiln_train::train_on_devices::<B>(
                    &self.config,
                    devices,
                    backend,
                    self.options,
                )?;
                Ok((summary, true))
            }
            Some(job) => train_in_mpi_job::<B>(job, &self.config, devices, backend, self.options),
        }
    }
}

/// This process's place in an MPI job.
#[cfg(feature = "mpi")]
type MpiJob = Arc<kiln_dist::mpi::MpiSession>;
#[cfg(not(feature = "mpi"))]
type MpiJob = std::convert::Infallible;

/// Joins the MPI job this process was launched into (mpirun, srun, an MPI operator), if any;
/// refuses launches that cannot work.
fn join_mpi_job(timeout: Duration, stop: &Arc<AtomicBool>) -> Result<Option<MpiJob>> {
    let env = |k: &str| std::env::var(k).ok();
    let launcher = kiln_dist::MpiEnv::detect();
    let slurm_tasks = kiln_dist::slurm_step_tasks(env).unwrap_or(1);
    let Some(launcher) = launcher else {
        if slurm_tasks > 1 {
            bail!(
                "srun started {slurm_tasks} tasks, but no MPI process manager connects them, so each would train alone: run srun --mpi=pmix (srun --mpi=list shows the plugins), or mpirun inside the allocation"
            );
        }
        return Ok(None);
    };
    #[cfg(feature = "mpi")]
    {
        let session = kiln_dist::mpi::MpiSession::init(timeout, Some(stop.clone()))?;
        if session.size() == 1 && slurm_tasks > 1 {
            bail!(
                "srun started {slurm_tasks} tasks, but MPI sees each alone ({} = {:?}): run srun --mpi=pmix (srun --mpi=list shows the plugins), or mpirun inside the allocation",
                launcher.var,
                launcher.size
            );
        }
        if session.size() == 1 {
            return Ok(None);
        }
        Ok(Some(Arc::new(session)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (timeout, stop);
        let size = launcher.size.unwrap_or(slurm_tasks);
        if size > 1 || launcher.size.is_none() {
            bail!(
                "this process is one of {} processes of an MPI job ({} is set), but this kiln was built without the `mpi` feature; rebuild with cargo build --release -p kiln-cli --features mpi (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev)",
                launcher.size.map_or("several".to_string(), |s| s.to_string()),
                launcher.var
            );
        }
        Ok(None)
    }
}

/// Trains as one rank of an MPI job; an error stops the whole job at once.
#[cfg(feature = "mpi")]
fn train_in_mpi_job<B: AutodiffBackend>(
    job: MpiJob,
    config: &Config,
    devices: Vec<B::Device>,
    backend: BackendKind,
    options: TrainOptions,
) -> Result<(kiln_train::TrainSummary, bool)> {
    use kiln_core::config::Engine;
    let device = devices.into_iter().next().expect("one device");
    let nccl = match config.distributed.engine {
        Engine::Auto => None,
        Engine::Mpi => Some(false),
        Engine::Nccl => Some(true),
    };
    let rank = job.rank();
    let result =
        kiln_dist::mpi::process_communicator::<B::InnerBackend>(job.clone(), &device, nccl)
            .and_then(|mut comm| {
                kiln_train::train::<B>(config, device, backend, options, comm.as_mut())
            });
    match result {
        Ok(summary) => Ok((summary, rank == 0)),
        Err(e) => {
            eprintln!("error: rank {rank} of {}: {e:#}", job.size());
            job.abort(1)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn train_in_mpi_job<B: AutodiffBackend>(
    job: MpiJob,
    _config: &Config,
    _devices: Vec<B::Device>,
    _backend: BackendKind,
    _options: TrainOptions,
) -> Result<(kiln_train::TrainSummary, bool)> {
    match job {}
}

/// `kiln launch`: runs `mpirun -np N <this kiln> train ...` and exits with its status.
fn launch(nproc: usize, mpirun_args: &[String], train: &[String]) -> Result<()> {
    if nproc == 0 {
        bail!("--nproc: must be at least 1");
    }
    if !cfg!(feature = "mpi") {
        bail!(
            "kiln launch runs data-parallel MPI processes, but this kiln was built without the `mpi` feature; rebuild with cargo build --release -p kiln-cli --features mpi (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev)"
        );
    }
    let exe = std::env::current_exe().context("cannot find the path of this kiln binary")?;
    let mut cmd = std::process::Command::new("mpirun");
    // One core per process is OpenMPI's default binding for small jobs, which would leave each
    // worker's compute threads on a single core; --oversubscribe allows more processes than cores.
    cmd.args([
        "-np",
        &nproc.to_string(),
        "--bind-to",
        "none",
        "--oversubscribe",
    ])
    .args(mpirun_args)
    .arg(&exe)
    .arg("train")
    .args(train)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    tracing::info!("running {:?}", cmd);
    // Ctrl-C reaches mpirun and the workers; this process waits for them to stop.
    let _ = stop_on_signals()?;
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "kiln launch needs OpenMPI's mpirun on the PATH (Debian: apt-get install openmpi-bin)"
        ),
        Err(e) => return Err(e).context("cannot run mpirun"),
    };
    if status.success() {
        return Ok(());
    }
    bail!("mpirun -np {nproc} kiln train ... failed ({status}); the workers' errors are above")
}

struct GenerateTask {
    config: Config,
    run_dir: PathBuf,
    file: PathBuf,
    sampling: Sampling,
}

impl BackendTask for GenerateTask {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        _backend: BackendKind,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("dispatch gives a device");
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

struct ExportTask {
    source: Source,
    opts: ExportOptions,
}

impl BackendTask for ExportTask {
    type Output = Result<serde_json::Value>;
    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        _backend: BackendKind,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("dispatch gives a device");
        kiln_export::export::<B::InnerBackend>(self.source, &self.opts, &device)
    }
}

struct PredictTask {
    export: PathBuf,
    inputs: Vec<String>,
    logits: bool,
    sampling: Sampling,
}

impl BackendTask for PredictTask {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        _backend: BackendKind,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("dispatch gives a device");
        predict::<B::InnerBackend>(self, &device)
    }
}

fn predict<B: Backend>(task: PredictTask, device: &B::Device) -> Result<()> {
    let loaded = kiln_export::predict::load::<B>(&task.export, device)?;
    let mut out = std::io::stdout().lock();
    match &loaded.task {
        kiln_export::predict::Task::Classifier { sample_shape, .. } => {
            let paths: Vec<PathBuf> = task.inputs.iter().map(PathBuf::from).collect();
            let records = kiln_export::predict::read_inputs(&paths, sample_shape)?;
            kiln_export::predict::classify(&loaded, &records, task.logits, device, &mut out)
        }
        kiln_export::predict::Task::Language { .. } => {
            let [prompt] = task.inputs.as_slice() else {
                bail!(
                    "a GPT export takes one prompt, got {} arguments; quote the prompt",
                    task.inputs.len()
                );
            };
            if task.logits {
                kiln_export::predict::prompt_logits(&loaded, prompt, device, &mut out)
            } else {
                let sampling = Sampling {
                    prompt: prompt.clone(),
                    ..task.sampling
                };
                kiln_export::predict::complete(&loaded, &sampling, device, &mut out)
            }
        }
    }
}

struct EvalTask {
    config: Config,
    file: PathBuf,
    split: Split,
}

impl BackendTask for EvalTask {
    type Output = Result<serde_json::Value>;
    fn run<B: AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        _backend: BackendKind,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("dispatch gives a device");
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
        &ModelConfig::of(&task.config)?,
        &data.shape(),
        task.config.train.precision,
        task.config.run.seed,
        &device,
    )?;
    let model = weights::load(model, &task.file)?;
    let r = evaluate(&model, data.eval_batches(split, &task.config), &device)?;
    Ok(r.json_with(serde_json::json!({"split": name, "weights": task.file})))
}
