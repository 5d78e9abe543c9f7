//! The run configuration: one TOML file plus `--set key=value` overrides.
//!
//! Loading goes file → TOML value → overrides applied to the value → typed structs (serde, unknown
//! keys rejected) → validation. Overrides therefore get exactly the same type checking as the file.
//!
//! Reading order: this file holds the [`Config`] type, its sections and their defaults (the
//! `[data]` section in `data`, `[tracking]` in `tracking`); then `validate` (ranges and
//! combinations), `hash` (the maths hash, changed keys and the keys a resumed run may change) and
//! `load` (files, `--set` overrides, TOML back out). The README's "Config reference" lists the
//! same keys.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

mod data;
mod finetune;
mod hash;
mod load;
mod tracking;
mod validate;

#[cfg(test)]
mod tests;

pub use data::{DataFormat, DataSection, DataTask, MissingValues, TokenDtype};
pub use finetune::{FinetuneSection, LORA_TARGETS};
pub use hash::{is_resumable_key, RESUMABLE_KEYS};
pub use load::apply_override;
pub use tracking::{Switch, TrackingSection};

/// A whole run, as resolved from the file, the overrides and the defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[run]` (required): the run's name, seed and where its directory goes.
    pub run: RunSection,
    /// `[data]` (required): what to read and how to batch it.
    pub data: DataSection,
    /// The model's own section: Kiln's models read theirs (kiln-models), a program's model reads
    /// its own (see [`ModelSection::parse`]).
    #[serde(default)]
    pub model: ModelSection,
    /// `[optimizer]`: AdamW or SGD and their hyperparameters (all keys have defaults).
    #[serde(default)]
    pub optimizer: OptimizerSection,
    /// `[schedule]`: the learning-rate schedule (default: constant, no warmup).
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// `[train]` (required): the run's length, evaluation and logging cadence, precision.
    pub train: TrainSection,
    /// `[checkpoint]`: how often to save, how many to keep and which one is the best.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// `[distributed]`: data-parallel training across workers.
    #[serde(default)]
    pub distributed: DistributedSection,
    /// `[tracking]`: TensorBoard, MLflow and system metrics (none of it changes the numbers;
    /// left out of `config.toml` when every key has its default).
    #[serde(default, skip_serializing_if = "TrackingSection::is_default")]
    pub tracking: TrackingSection,
    /// `[finetune]`: LoRA adapters on a GPT started from `model.init_from` (absent: every
    /// weight trains; left out of `config.toml` and the hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneSection>,
}

/// `[run]`: what the run is called, its seed and where its directory is written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// `run.name` (required): name of the run; its directory is `<output_dir>/<name>`. A plain,
    /// non-empty directory name (no slashes, not `.` or `..`).
    pub name: String,
    /// `run.seed` (default 42): seeds the initial weights, the data splits, the shuffles and
    /// dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `run.output_dir` (default `"checkpoints"`): the directory that run directories go in,
    /// relative to where `kiln` runs.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// `run.overwrite` (default false): replace an existing run directory of the same name
    /// instead of refusing to start.
    #[serde(default)]
    pub overwrite: bool,
}

/// `train.precision`: arithmetic of the forward and backward passes. Weights and optimizer state
/// stay f32; with f16/bf16 the matrix products run in that type (mixed precision, like
/// `torch.autocast`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// `"f32"` (the default): full precision, on every backend.
    #[default]
    F32,
    /// `"f16"`: half precision on the GPU backends (cuda, wgpu).
    F16,
    /// `"bf16"`: bfloat16 on the cuda backend (WebGPU has no bf16).
    Bf16,
}

impl Precision {
    /// The name in config files: `"f32"`, `"f16"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The `[model]` section as written. Its keys belong to the model: Kiln's built-in models read
/// theirs through kiln-models (`model.kind` picks one), a program's own model reads its own with
/// [`ModelSection::parse`]. Empty when the file has no `[model]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct ModelSection(pub toml::Table);

impl ModelSection {
    /// `model.kind`, if the section names one.
    pub fn kind(&self) -> Option<&str> {
        self.0.get("kind").and_then(toml::Value::as_str)
    }

    /// The section as the type `T` (a model's own config struct, with serde defaults and
    /// `deny_unknown_fields` as it likes); errors name the section.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(toml::Value::Table(self.0.clone()))
            .map_err(|e| anyhow::anyhow!("model: {}", one_line(&e.to_string())))
    }
}

/// `optimizer.kind`: the optimizer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `"adamw"` (the default): Adam with decoupled weight decay (`optimizer.betas`,
    /// `optimizer.eps`).
    Adamw,
    /// `"sgd"`: stochastic gradient descent, with optional (Nesterov) momentum.
    Sgd,
}

/// `[optimizer]`: the optimizer and its hyperparameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    /// `optimizer.kind` (default `"adamw"`): `"adamw"` or `"sgd"`.
    #[serde(default = "default_optimizer")]
    pub kind: OptimizerKind,
    /// `optimizer.lr` (default 1e-3, > 0): the peak learning rate, which the schedule scales
    /// (at most 1 with the cosine schedule).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `optimizer.weight_decay` (default 0, >= 0): decoupled for AdamW, L2 for SGD; never
    /// applied to biases, norm parameters or embeddings.
    #[serde(default)]
    pub weight_decay: f64,
    /// `optimizer.betas` (default `[0.9, 0.999]`, each in [0, 1)): AdamW's decay rates of the
    /// first and second moment estimates.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// `optimizer.eps` (default 1e-8, > 0): AdamW's term added to the denominator.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// `optimizer.momentum` (default 0, in [0, 1)): SGD momentum without dampening, as PyTorch
    /// (0 = plain SGD); only with `kind = "sgd"`.
    #[serde(default)]
    pub momentum: f64,
    /// `optimizer.nesterov` (default false): SGD Nesterov momentum; needs `momentum > 0`.
    #[serde(default)]
    pub nesterov: bool,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            kind: default_optimizer(),
            lr: default_lr(),
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            momentum: 0.0,
            nesterov: false,
        }
    }
}

/// `schedule.kind`: how the learning rate moves after the warmup.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `"constant"` (the default): `optimizer.lr` throughout.
    Constant,
    /// `"cosine"`: cosine decay from `optimizer.lr` to `schedule.min_lr` at the last step.
    Cosine,
    /// `"step"`: multiply the learning rate by `gamma` every `step_size` steps.
    Step,
}

/// `[schedule]`: the learning-rate schedule, an optional linear warmup and then `kind`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// `schedule.kind` (default `"constant"`): `"constant"`, `"cosine"` or `"step"`.
    #[serde(default = "default_schedule")]
    pub kind: ScheduleKind,
    /// `schedule.warmup_steps` (default 0 = none): optimizer steps of linear warmup up to
    /// `optimizer.lr` before the schedule, for every kind.
    #[serde(default)]
    pub warmup_steps: usize,
    /// `schedule.min_lr` (default 0, in [0, optimizer.lr]): the cosine schedule's floor,
    /// reached at the last step.
    #[serde(default)]
    pub min_lr: f64,
    /// `schedule.step_size` (default 1000, at least 1): step schedule: optimizer steps between
    /// two decays.
    #[serde(default = "default_step_size")]
    pub step_size: usize,
    /// `schedule.gamma` (default 0.1, in (0, 1]): step schedule: the factor of each decay.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: default_schedule(),
            warmup_steps: 0,
            min_lr: 0.0,
            step_size: default_step_size(),
            gamma: default_gamma(),
        }
    }
}

/// `[train]`: how long the run is, how often it validates and logs, and its arithmetic.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// `train.max_steps` (at least 1): stop after this many optimizer steps. Set exactly one of
    /// `max_steps` and `epochs`; `--set` of one replaces the other from the file.
    pub max_steps: Option<usize>,
    /// `train.epochs` (at least 1): stop after this many passes over the training split (the
    /// alternative to `max_steps`).
    pub epochs: Option<usize>,
    /// `train.eval_every` (default 0): validate every n optimizer steps (0 = only at the end;
    /// always at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// `train.log_every` (default 50, at least 1): log a train event every n optimizer steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// `train.grad_clip_norm` (> 0; unset = no clipping): clip gradients to this global L2
    /// norm (like `torch.nn.utils.clip_grad_norm_`).
    pub grad_clip_norm: Option<f64>,
    /// `train.grad_accum_steps` (default 1, at least 1): micro-batches of `data.batch_size`
    /// whose gradients are summed into one optimizer step: the effective batch is batch_size x
    /// grad_accum_steps.
    #[serde(default = "default_one")]
    pub grad_accum_steps: usize,
    /// `train.precision` (default `"f32"`): `"f32"`, or `"f16"`/`"bf16"` mixed precision on the
    /// GPU backends (cuda; wgpu f16 only); an error on the CPU backends.
    #[serde(default)]
    pub precision: Precision,
    /// `train.loss` (regression only; default `"mse"`): the loss of a regression, measured in
    /// standard deviations of the training targets: `"mse"`, `"mae"` or `"huber"` (squared
    /// below one standard deviation, linear above).
    pub loss: Option<RegressionLoss>,
}

/// `train.loss`: the loss a regression minimizes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegressionLoss {
    /// `"mse"` (the default): the mean squared error.
    #[default]
    Mse,
    /// `"mae"`: the mean absolute error.
    Mae,
    /// `"huber"`: half the squared error within one standard deviation, linear beyond it.
    Huber,
}

/// `[checkpoint]`: when checkpoints are written, how many are kept and which one is the best.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// `checkpoint.every_steps` (default 0): save a checkpoint every n optimizer steps (0 = only
    /// at the end; always at the end, on a signal and at `--until-step`).
    #[serde(default)]
    pub every_steps: usize,
    /// `checkpoint.keep_last` (at least 1): keep only the newest n checkpoints (the best one is
    /// always kept); unset keeps all.
    pub keep_last: Option<usize>,
    /// `checkpoint.best_metric`: track the best checkpoint by this validation metric:
    /// `"valid.loss"` or `"valid.<metric>"` for any metric the model logs (`"valid.accuracy"` for
    /// Kiln's models). A checkpoint is saved whenever it improves. Needs
    /// `data.valid_fraction > 0`.
    pub best_metric: Option<BestMetric>,
    /// `checkpoint.best_mode`: whether a larger ("max") or a smaller ("min") `best_metric` is
    /// better. Unset: smaller for losses and errors (loss, mse, rmse, mae, perplexity, names
    /// ending in `loss` or `error`), larger for everything else (accuracy, r2, ...).
    pub best_mode: Option<BestMode>,
}

impl CheckpointSection {
    /// Whether a smaller `best_metric` is better (see [`CheckpointSection::best_mode`]).
    pub fn best_is_lower(&self) -> bool {
        match (self.best_mode, &self.best_metric) {
            (Some(mode), _) => mode == BestMode::Min,
            (None, Some(metric)) => metric.is_lower_better_by_name(),
            (None, None) => false,
        }
    }
}

/// `checkpoint.best_mode`: the direction of `checkpoint.best_metric`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BestMode {
    /// Smaller is better.
    Min,
    /// Larger is better.
    Max,
}

/// `[distributed]`: data-parallel training (how many workers is up to the launcher: `mpirun -np`,
/// `srun -n`, `kiln launch --nproc`, `--devices`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// `distributed.timeout_secs` (default 300, at least 1; seconds): a collective (all-reduce,
    /// joining the job) that waits longer than this for the other workers stops the run with an
    /// error: a worker died, hung or never joined.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// `distributed.engine` (default `"auto"`): how processes exchange gradients: "auto" (NCCL
    /// for CUDA builds on the cuda backend, otherwise MPI), "mpi" (host buffers, any backend)
    /// or "nccl".
    #[serde(default)]
    pub engine: Engine,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection {
            timeout_secs: default_timeout_secs(),
            engine: Engine::Auto,
        }
    }
}

/// `distributed.engine`: how the processes of a job exchange gradients (the devices of one
/// process always use burn-collective's local all-reduce).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// `"auto"` (the default): NCCL on the cuda backend of a `cuda,mpi` build, MPI otherwise.
    #[default]
    Auto,
    /// `"mpi"`: `MPI_Allreduce` on host buffers; any backend.
    Mpi,
    /// `"nccl"`: NCCL between CUDA GPUs (`cuda,mpi` builds, cuda backend).
    Nccl,
}

fn default_timeout_secs() -> f64 {
    300.0
}

/// A validation metric that selects the `best` checkpoint: `valid.loss` or `valid.<metric>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct BestMetric(String);

impl TryFrom<String> for BestMetric {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.strip_prefix("valid.") {
            Some(metric) if !metric.is_empty() => Ok(BestMetric(name)),
            _ => Err(format!(
                "checkpoint.best_metric = {name:?}: expected \"valid.<metric>\", e.g. \"valid.accuracy\" or \"valid.loss\""
            )),
        }
    }
}

impl From<BestMetric> for String {
    fn from(m: BestMetric) -> String {
        m.0
    }
}

impl BestMetric {
    /// The setting as written: `valid.accuracy`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The metric's name in the validation events: `accuracy` (or `loss`).
    pub fn metric(&self) -> &str {
        &self.0["valid.".len()..]
    }

    /// Whether the name says smaller is better: losses and errors.
    pub fn is_lower_better_by_name(&self) -> bool {
        let m = self.metric();
        matches!(m, "mse" | "rmse" | "mae" | "perplexity")
            || m.ends_with("loss")
            || m.ends_with("error")
    }

    /// Whether `new` is better than `old` (`lower`: smaller is better).
    pub fn improves(new: f64, old: Option<f64>, lower: bool) -> bool {
        match old {
            None => true,
            Some(old) if lower => new < old,
            Some(old) => new > old,
        }
    }
}

fn default_seed() -> u64 {
    42
}
fn default_output_dir() -> PathBuf {
    PathBuf::from("checkpoints")
}
fn default_num_classes() -> usize {
    10
}
fn default_test_fraction() -> f64 {
    0.2
}
fn default_valid_fraction() -> f64 {
    0.1
}
fn default_loader_threads() -> usize {
    1
}
fn default_prefetch() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adamw
}
fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn default_step_size() -> usize {
    1000
}
fn default_gamma() -> f64 {
    0.1
}
fn default_log_every() -> usize {
    50
}
fn default_one() -> usize {
    1
}
/// Collapses a multi-line message (toml's errors quote the offending line) into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .filter(|l| !l.starts_with('|') && !l.contains(" | "))
        .collect::<Vec<_>>()
        .join("; ")
}
