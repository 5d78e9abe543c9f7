//! The run configuration: one TOML file plus `--set key=value` overrides.
//!
//! Loading goes file → TOML value → overrides applied to the value → typed structs (serde, unknown
//! keys rejected) → validation. Overrides therefore get exactly the same type checking as the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A whole run, as resolved from the file, the overrides and the defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub run: RunSection,
    pub data: DataSection,
    /// The model's own section: Kiln's models read theirs (kiln-models), a program's model reads
    /// its own (see [`ModelSection::parse`]).
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub optimizer: OptimizerSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    pub train: TrainSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub distributed: DistributedSection,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Name of the run; its directory is `<output_dir>/<name>`.
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Replace an existing run directory of the same name instead of refusing to start.
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// IDX image and label files (MNIST layout), gzip or raw.
    Idx,
    /// A scikit-learn layout CSV table.
    Csv,
    /// A UTF-8 text file, tokenized by characters (the vocabulary is saved in the run directory).
    Text,
    /// A pre-tokenized token file (`kiln tokenize`): little-endian u16 or u32 ids, memory-mapped.
    Tokens,
}

impl DataFormat {
    /// The name in config files: `"idx"`, `"csv"`, `"text"` or `"tokens"`.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Idx => "idx",
            DataFormat::Csv => "csv",
            DataFormat::Text => "text",
            DataFormat::Tokens => "tokens",
        }
    }
}

/// Element type of a token file.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

/// Arithmetic of the forward and backward passes. Weights and optimizer state stay f32; with
/// f16/bf16 the matrix products run in that type (mixed precision, like `torch.autocast`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Which of Kiln's readers loads the data; a program that brings its own data leaves it out.
    pub format: Option<DataFormat>,
    // IDX: four files.
    pub train_images: Option<PathBuf>,
    pub train_labels: Option<PathBuf>,
    pub test_images: Option<PathBuf>,
    pub test_labels: Option<PathBuf>,
    /// IDX: number of classes (labels must lie in 0..num_classes).
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    // CSV: one file, the test split held out from it. Text/tokens: the text or token file, the
    // validation split held out from its end.
    pub path: Option<PathBuf>,
    /// Tokens: the element type of the token file (defaults to its `.json` sidecar, else u16).
    pub token_dtype: Option<TokenDtype>,
    /// Text/tokens: evaluate on at most this many batches of the validation split (all if unset).
    pub eval_max_batches: Option<usize>,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Fraction of the training data held out for validation.
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    pub batch_size: usize,
    /// Batch size for validation and test passes (defaults to `batch_size`).
    pub eval_batch_size: Option<usize>,
    /// Background threads that assemble batches.
    #[serde(default = "default_loader_threads")]
    pub loader_threads: usize,
    /// Batches each loader thread may build ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Standardize inputs with statistics of the training split (per feature for CSV, one scalar
    /// for images).
    #[serde(default = "default_true")]
    pub standardize: bool,
}

impl DataSection {
    /// `data.format`, which Kiln's own data needs (a program's own data leaves it out).
    pub fn kiln_format(&self) -> Result<DataFormat> {
        self.format.with_context(|| {
            "data.format: missing; Kiln reads \"idx\", \"csv\", \"text\" or \"tokens\" data (a program brings its own data through the library: see the README)"
        })
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

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    #[serde(default = "default_optimizer")]
    pub kind: OptimizerKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW betas.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// SGD momentum (0 = plain SGD).
    #[serde(default)]
    pub momentum: f64,
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

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    /// Linear warmup from 0 for `warmup_steps`, then cosine decay to `min_lr` at the last step.
    Cosine,
    /// Multiply the learning rate by `gamma` every `step_size` steps.
    Step,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    #[serde(default = "default_schedule")]
    pub kind: ScheduleKind,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "default_step_size")]
    pub step_size: usize,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Stop after this many optimizer steps (exclusive with `epochs`).
    pub max_steps: Option<usize>,
    /// Stop after this many passes over the training split.
    pub epochs: Option<usize>,
    /// Validate every n steps (0 = only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Log a train event every n steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Clip gradients to this global L2 norm (like `torch.nn.utils.clip_grad_norm_`).
    pub grad_clip_norm: Option<f64>,
    /// Micro-batches of `data.batch_size` whose gradients are summed into one optimizer step:
    /// the effective batch is batch_size x grad_accum_steps.
    #[serde(default = "default_one")]
    pub grad_accum_steps: usize,
    /// "f32", or "f16"/"bf16" mixed precision on the GPU backends.
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save a checkpoint every n steps (0 = only at the end).
    #[serde(default)]
    pub every_steps: usize,
    /// Keep only the newest n checkpoints (the best one is always kept); unset keeps all.
    pub keep_last: Option<usize>,
    /// Track the best checkpoint by this validation metric: "valid.loss" or "valid.<metric>"
    /// for any metric the model logs ("valid.accuracy" for Kiln's models). A checkpoint is saved
    /// whenever it improves.
    pub best_metric: Option<BestMetric>,
    /// Whether a larger ("max") or a smaller ("min") `best_metric` is better. Unset: smaller
    /// for losses and errors (loss, mse, rmse, mae, perplexity, names ending in `loss` or
    /// `error`), larger for everything else (accuracy, r2, ...).
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

/// The direction of `checkpoint.best_metric`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BestMode {
    /// Smaller is better.
    Min,
    /// Larger is better.
    Max,
}

/// Data-parallel training (how many workers is up to the launcher: `mpirun -np`, `srun -n`,
/// `kiln launch --nproc`, `--devices`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// A collective (all-reduce, joining the job) that waits longer than this for the other
    /// workers stops the run with an error: a worker died, hung or never joined.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// How processes exchange gradients: "auto" (NCCL for CUDA builds on the cuda backend,
    /// otherwise MPI), "mpi" (host buffers, any backend) or "nccl".
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

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Auto,
    Mpi,
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

impl Config {
    /// Reads the config of a run being resumed (its `config.toml`) and applies `overrides`.
    pub fn load_for_resume(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the run's config {}", path.display()))?;
        Self::from_toml_str(&text, overrides, &path.display().to_string())
    }

    /// Reads `path`, applies `overrides` (`a.b=value`), deserializes and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text, overrides, &path.display().to_string())
    }

    /// Parses a config from TOML text; `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, overrides: &[String], origin: &str) -> Result<Config> {
        let mut value: toml::Table = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: invalid TOML: {}", one_line(&e.to_string())))?;
        // The run's length is max_steps or epochs: overriding one replaces the other from the file.
        let overridden = |k: &str| {
            overrides
                .iter()
                .any(|o| o.split_once('=').is_some_and(|(key, _)| key.trim() == k))
        };
        match (overridden("train.max_steps"), overridden("train.epochs")) {
            (true, false) => remove_key(&mut value, "train.epochs"),
            (false, true) => remove_key(&mut value, "train.max_steps"),
            _ => {}
        }
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: Config = Config::deserialize(toml::Value::Table(value)).map_err(|e| {
            let what = if overrides.is_empty() {
                origin.to_string()
            } else {
                format!("{origin} (with --set overrides)")
            };
            anyhow::anyhow!("{what}: {}", one_line(&e.to_string()))
        })?;
        config
            .validate()
            .with_context(|| format!("{origin}: invalid config"))?;
        Ok(config)
    }

    /// The fully resolved config as TOML (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes to TOML")
    }

    /// Checks values that types alone cannot: ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        check(!self.run.name.is_empty(), "run.name", "must not be empty")?;
        check(
            !self.run.name.contains(['/', '\\']) && self.run.name != "." && self.run.name != "..",
            "run.name",
            "must be a plain directory name (no slashes)",
        )?;
        check(d.batch_size > 0, "data.batch_size", "must be at least 1")?;
        check(
            self.distributed.timeout_secs >= 1.0 && self.distributed.timeout_secs.is_finite(),
            "distributed.timeout_secs",
            "must be at least 1 (seconds)",
        )?;
        if let Some(b) = d.eval_batch_size {
            check(b > 0, "data.eval_batch_size", "must be at least 1")?;
        }
        check(
            d.loader_threads > 0,
            "data.loader_threads",
            "must be at least 1",
        )?;
        check(d.prefetch > 0, "data.prefetch", "must be at least 1")?;
        check(
            (0.0..1.0).contains(&d.valid_fraction),
            "data.valid_fraction",
            "must be in [0, 1)",
        )?;
        match d.format {
            None => {}
            Some(DataFormat::Idx) => {
                for (key, v) in [
                    ("data.train_images", &d.train_images),
                    ("data.train_labels", &d.train_labels),
                    ("data.test_images", &d.test_images),
                    ("data.test_labels", &d.test_labels),
                ] {
                    check(v.is_some(), key, "is required when data.format = \"idx\"")?;
                }
                check(d.num_classes >= 2, "data.num_classes", "must be at least 2")?;
            }
            Some(DataFormat::Text | DataFormat::Tokens) => {
                check(
                    d.path.is_some(),
                    "data.path",
                    "is required when data.format = \"text\" or \"tokens\"",
                )?;
            }
            Some(DataFormat::Csv) => {
                check(
                    d.path.is_some(),
                    "data.path",
                    "is required when data.format = \"csv\"",
                )?;
                check(
                    d.test_fraction > 0.0 && d.test_fraction < 1.0,
                    "data.test_fraction",
                    "must be in (0, 1)",
                )?;
            }
        }

        if let Some(b) = d.eval_max_batches {
            check(b > 0, "data.eval_max_batches", "must be at least 1")?;
        }

        let o = &self.optimizer;
        check(
            o.lr > 0.0 && o.lr.is_finite(),
            "optimizer.lr",
            "must be a positive number",
        )?;
        check(
            o.weight_decay >= 0.0,
            "optimizer.weight_decay",
            "must be >= 0",
        )?;
        check(
            o.betas.iter().all(|b| (0.0..1.0).contains(b)),
            "optimizer.betas",
            "both betas must be in [0, 1)",
        )?;
        check(o.eps > 0.0, "optimizer.eps", "must be > 0")?;
        check(
            (0.0..1.0).contains(&o.momentum),
            "optimizer.momentum",
            "must be in [0, 1)",
        )?;
        check(
            !o.nesterov || o.momentum > 0.0,
            "optimizer.nesterov",
            "needs optimizer.momentum > 0",
        )?;
        check(
            o.kind == OptimizerKind::Sgd || (o.momentum == 0.0 && !o.nesterov),
            "optimizer.momentum",
            "applies to kind = \"sgd\" only (AdamW uses optimizer.betas)",
        )?;

        let s = &self.schedule;
        check(
            s.min_lr >= 0.0 && s.min_lr <= o.lr,
            "schedule.min_lr",
            "must be in [0, optimizer.lr]",
        )?;
        check(s.step_size > 0, "schedule.step_size", "must be at least 1")?;
        check(
            s.gamma > 0.0 && s.gamma <= 1.0,
            "schedule.gamma",
            "must be in (0, 1]",
        )?;
        if s.kind == ScheduleKind::Cosine {
            check(
                o.lr <= 1.0,
                "optimizer.lr",
                "must be at most 1 with the cosine schedule",
            )?;
        }

        let t = &self.train;
        match (t.max_steps, t.epochs) {
            (Some(0), _) => bail!("train.max_steps: must be at least 1"),
            (_, Some(0)) => bail!("train.epochs: must be at least 1"),
            (Some(_), Some(_)) => {
                bail!("train.max_steps and train.epochs: set one of them, not both")
            }
            (None, None) => bail!("train: set train.max_steps or train.epochs"),
            _ => {}
        }
        check(t.log_every > 0, "train.log_every", "must be at least 1")?;
        check(
            t.grad_accum_steps > 0,
            "train.grad_accum_steps",
            "must be at least 1",
        )?;
        if let Some(c) = t.grad_clip_norm {
            check(c > 0.0, "train.grad_clip_norm", "must be > 0")?;
        }
        if let Some(k) = self.checkpoint.keep_last {
            check(k > 0, "checkpoint.keep_last", "must be at least 1")?;
        }
        if self.checkpoint.best_metric.is_some() {
            check(
                self.data.valid_fraction > 0.0,
                "checkpoint.best_metric",
                "needs a validation split (data.valid_fraction > 0)",
            )?;
        }
        Ok(())
    }

    /// A sha256 of everything in the config that decides the numbers a run computes: the config
    /// without the keys of [`RESUMABLE_KEYS`] and without where the run is written. A built-in
    /// model's section is hashed in version 1's layout (see [`crate::compat`]), so runs written
    /// before per-model sections keep their hash.
    pub fn maths_hash(&self) -> String {
        let mut table = self.table();
        if let Some(toml::Value::Table(model)) = table.get_mut("model") {
            *model = crate::compat::model_in_v1_layout(model);
        }
        for key in RESUMABLE_KEYS
            .iter()
            .chain(&["run.name", "run.output_dir", "run.overwrite"])
        {
            remove_key(&mut table, key);
        }
        // A key added later, set to the value that its absence means, computes what configs
        // without it compute: it hashes as they do.
        for (key, default) in IMPLICIT_DEFAULTS {
            if lookup(&table, key).and_then(toml::Value::as_str) == Some(default) {
                remove_key(&mut table, key);
            }
        }
        let text = toml::to_string(&table).expect("a TOML table serializes");
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The dotted keys whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let mut a = Vec::new();
        let mut b = Vec::new();
        flatten("", &self.table(), &mut a);
        flatten("", &other.table(), &mut b);
        let mut keys: Vec<String> = a
            .iter()
            .chain(&b)
            .map(|(k, _)| k.clone())
            .filter(|k| {
                a.iter().find(|(x, _)| x == k).map(|(_, v)| v)
                    != b.iter().find(|(x, _)| x == k).map(|(_, v)| v)
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("a Config always serializes to a TOML table")
    }
}

/// Keys that a resumed run may change without changing what it computes: logging, evaluation
/// and checkpoint cadence, loader parallelism, and where the run stops.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.log_every",
    "train.eval_every",
    "train.max_steps",
    "train.epochs",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "checkpoint.best_metric",
    "checkpoint.best_mode",
    "data.loader_threads",
    "data.prefetch",
    "data.eval_batch_size",
    "distributed.timeout_secs",
    "distributed.engine",
];

/// Keys added after configs were first hashed, with the value their absence stands for.
const IMPLICIT_DEFAULTS: &[(&str, &str)] = &[("model.gelu", "exact")];

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn remove_key(table: &mut toml::Table, dotted: &str) {
    let (parents, last) = match dotted.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, dotted),
    };
    let mut node = table;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        match node.get_mut(part) {
            Some(toml::Value::Table(t)) => node = t,
            _ => return,
        }
    }
    node.remove(last);
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            v => out.push((key, v.clone())),
        }
    }
}

fn check(ok: bool, key: &str, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        bail!("{key}: {what}")
    }
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

/// Applies one `a.b.c=value` override to the raw TOML table. The value is parsed as a TOML value
/// (`3e-4`, `true`, `"text"`, `[64, 64]`); a bare word that is not valid TOML is taken as a string,
/// so `--set model.kind=cnn` works without quotes.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        bail!("--set {item}: expected KEY=VALUE, e.g. --set optimizer.lr=3e-4");
    };
    let key = key.trim();
    let path: Vec<&str> = key.split('.').collect();
    if key.is_empty() || path.iter().any(|p| p.is_empty()) {
        bail!("--set {item}: the key must be a dotted path such as optimizer.lr");
    }
    let value = parse_value(raw.trim());
    let (last, parents) = path.split_last().expect("path is not empty");
    let mut node = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => bail!(
                "--set {item}: {} is a value, not a section",
                path[..=i].join(".")
            ),
        };
    }
    node.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").expect("parsed table has the key"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [run]
        name = "t"
        [data]
        format = "csv"
        path = "x.csv"
        batch_size = 8
        [model]
        kind = "mlp"
        hidden = [16]
        [train]
        max_steps = 10
    "#;

    fn load(overrides: &[&str]) -> Result<Config> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::from_toml_str(BASE, &o, "base.toml")
    }

    #[test]
    fn overriding_the_run_length_replaces_the_other_length_key() {
        let epochs = load(&["train.epochs=3"]).unwrap();
        assert_eq!(
            (epochs.train.epochs, epochs.train.max_steps),
            (Some(3), None)
        );
        let steps = load(&["train.max_steps=7"]).unwrap();
        assert_eq!((steps.train.epochs, steps.train.max_steps), (None, Some(7)));
        let both = load(&["train.epochs=3", "train.max_steps=7"]).unwrap_err();
        assert!(
            format!("{both:#}").contains("set one of them, not both"),
            "{both:#}"
        );
    }

    #[test]
    fn every_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 8, "only {seen} configs in {}", dir.display());
    }

    #[test]
    fn defaults_fill_in() {
        let c = load(&[]).unwrap();
        assert_eq!(c.run.seed, 42);
        assert_eq!(c.optimizer.kind, OptimizerKind::Adamw);
        assert_eq!(c.data.valid_fraction, 0.1);
    }

    #[test]
    fn overrides_are_type_checked_like_the_file() {
        let c = load(&[
            "optimizer.lr=3e-4",
            "model.hidden=[32, 8]",
            "model.kind=mlp",
        ])
        .unwrap();
        assert_eq!(c.optimizer.lr, 3e-4);
        assert_eq!(
            c.model.0["hidden"],
            toml::Value::try_from(vec![32, 8]).unwrap()
        );
        assert_eq!(c.model.kind(), Some("mlp"));
        let e = load(&["data.batch_size=many"]).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        assert!(e.contains("--set"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = load(&["train.max_stepz=5"]).unwrap_err().to_string();
        assert!(e.contains("max_stepz"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_set_syntax() {
        assert!(load(&["optimizer.lr"])
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        assert!(load(&["run.name.x=1"])
            .unwrap_err()
            .to_string()
            .contains("not a section"));
        assert!(load(&[".=1"]).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let e = format!("{:#}", load(&["data.batch_size=0"]).unwrap_err());
        assert!(e.contains("data.batch_size: must be at least 1"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = load(&["optimizer.kind=sgd", "optimizer.momentum=0.9"]).unwrap();
        let again = Config::from_toml_str(&c.to_toml(), &[], "resolved").unwrap();
        assert_eq!(c, again);
    }

    /// Runs written by an earlier version of Kiln (before `model.gelu` existed, and before
    /// per-model sections): their resolved configs and the hash their checkpoints recorded
    /// (tests/fixtures/earlier-runs). Their configs must hash as they did then, or resuming them
    /// breaks; and so must the same runs described as configs are written now, a model section
    /// with only its kind's keys (kiln-models drops the others).
    #[test]
    fn configs_of_runs_written_by_earlier_versions_keep_their_hash() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/earlier-runs");
        for run in [
            "fashion-mnist-mlp",
            "fashion-mnist-cnn",
            "shakespeare-char-gpt",
        ] {
            let dir = fixtures.join(run);
            let mut config = Config::load(&dir.join("config.toml"), &[]).unwrap();
            let recorded: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("config_hash.json")).unwrap(),
            )
            .unwrap();
            let v1 = config.maths_hash();
            assert_eq!(recorded["config_hash"].as_str(), Some(v1.as_str()), "{run}");

            let kind = config.model.kind().unwrap().to_string();
            config
                .model
                .0
                .retain(|k, _| !crate::compat::v1_key_of_another_kind(&kind, k));
            assert!(config.model.0.len() <= 10, "{run}: {:?}", config.model.0);
            assert_eq!(config.maths_hash(), v1, "{run}");
            config
                .model
                .0
                .insert("dropout".into(), toml::Value::Float(0.5));
            assert_ne!(config.maths_hash(), v1, "{run}: dropout");
        }
    }

    #[test]
    fn model_gelu_hashes_like_its_absence_when_exact() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/earlier-runs/shakespeare-char-gpt/config.toml");
        let with = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            Config::load(&path, &o).unwrap()
        };
        let unset = with(&[]);
        let exact = with(&["model.gelu=\"exact\""]);
        let tanh = with(&["model.gelu=\"tanh\""]);
        assert_eq!(unset.maths_hash(), exact.maths_hash());
        assert_ne!(unset.maths_hash(), tanh.maths_hash());
    }

    #[test]
    fn a_programs_config_needs_no_data_format_and_no_model_section() {
        let text = "[run]\nname = \"own\"\n[data]\nbatch_size = 4\n[train]\nmax_steps = 3\n";
        let c = Config::from_toml_str(text, &[], "own.toml").unwrap();
        assert_eq!((c.data.format, c.model.kind()), (None, None));
        let e = format!("{:#}", c.data.kiln_format().unwrap_err());
        assert!(
            e.starts_with("data.format: missing") && e.contains("README"),
            "{e}"
        );
        let again = Config::from_toml_str(&c.to_toml(), &[], "resolved").unwrap();
        assert_eq!(c, again);
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Own {
            width: usize,
        }
        let with = Config::from_toml_str(text, &["model.width=7".into()], "own.toml").unwrap();
        assert_eq!(with.model.parse::<Own>().unwrap().width, 7);
        let e = with
            .model
            .parse::<std::collections::HashMap<String, bool>>();
        assert!(format!("{:#}", e.unwrap_err()).starts_with("model: "));
    }

    #[test]
    fn maths_hash_ignores_cadence_and_location_only() {
        let base = load(&[]).unwrap();
        let cadence = load(&["train.log_every=7", "train.eval_every=3", "run.name=other"]).unwrap();
        assert_eq!(base.maths_hash(), cadence.maths_hash());
        let lr = load(&["optimizer.lr=0.5"]).unwrap();
        assert_ne!(base.maths_hash(), lr.maths_hash());
        assert_eq!(
            base.changed_keys(&cadence),
            vec!["run.name", "train.eval_every", "train.log_every"]
        );
        assert_eq!(base.changed_keys(&lr), vec!["optimizer.lr"]);
    }
}
