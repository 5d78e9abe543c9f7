//! What a training checkpoint holds besides the tensors (`state.json`), and the conversion of
//! the model and optimizer between burn tensors and host memory, by parameter name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use burn_store::ModuleSnapshot;
use kiln_checkpoint::layout::{parse_step_dir, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use kiln_checkpoint::{CheckpointError, HostTensor, Payload, Verified};
use serde::{Deserialize, Serialize};

use crate::optim::{Optim, ParamState};
use crate::scaler::LossScale;
use kiln_infer::EvalResult;

/// Everything besides tensors that training needs to continue exactly where it stopped. Every
/// random stream in Kiln is counter-based — a seed plus a position — so recording the positions
/// recreates the streams exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Where the data loader stands: the next batch is `batch_in_epoch` of `epoch` (0-based).
    pub data: DataPosition,
    /// The positions of the run's random streams.
    pub rng: RngState,
    /// Where the learning-rate schedule stands.
    pub schedule: ScheduleState,
    /// The optimizer whose buffers `optimizer.safetensors` holds.
    pub optimizer: OptimizerInfo,
    /// Training statistics accumulated since the last log event.
    pub window: WindowState,
    /// The best validation result so far, when `checkpoint.best_metric` is set.
    pub best: Option<Best>,
    /// The latest validation result.
    pub last_valid: Option<EvalResult>,
    /// Seconds the loop has waited for the data loader over the whole run.
    pub data_wait_secs: f64,
    /// The f16 loss scaler (absent in f32/bf16 runs).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
    /// Data-parallel workers that trained the run (the effective batch is data.batch_size x
    /// workers x train.grad_accum_steps).
    #[serde(default = "one")]
    pub workers: usize,
    /// A LoRA fine-tune's base model: the checkpoint holds only the adapters trained on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<kiln_infer::base::BaseRef>,
}

fn one() -> usize {
    1
}

/// Where the training stream continues.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DataPosition {
    /// The epoch (for a stream source: the pass) of the next batch.
    pub epoch: usize,
    /// The next batch's index in its epoch.
    pub batch_in_epoch: usize,
    /// Batches in one epoch (0 for a stream source, which does not know).
    pub batches_per_epoch: usize,
    /// Samples (or tokens) trained on so far.
    pub samples_seen: u64,
    /// A stream source's own position (absent for random-access data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<kiln_data::StreamPosition>,
}

/// The run's random streams: a seed and how far each stream has gone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RngState {
    /// `run.seed`: initial weights (ChaCha8 on the host), the split and the per-epoch shuffle.
    pub seed: u64,
    /// The shuffle of epoch e is a ChaCha8 permutation on stream e of the seed.
    pub shuffle_stream: usize,
    /// Dropout masks of step s come from the backend RNG seeded with (seed, s).
    pub dropout_next_step: usize,
}

/// Where the learning-rate schedule stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Steps the schedule spans (the run's length when it started).
    pub horizon_steps: usize,
    /// Steps the schedule has advanced.
    pub steps_done: usize,
    /// The learning rate of the last step.
    pub last_lr: f64,
}

/// Which optimizer wrote `optimizer.safetensors`, and the buffers it holds per parameter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptimizerInfo {
    /// `optimizer.kind` (`adamw`, `sgd`).
    pub kind: String,
    /// Buffer names, PyTorch's (`exp_avg`, `exp_avg_sq`, `momentum_buffer`).
    pub buffers: Vec<String>,
}

/// The sums of a log window that a checkpoint interrupted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowState {
    /// The training loss summed over the window's targets.
    pub loss_sum: f32,
    /// The model's sums ([`kiln_models::TrainModel::sum_names`]) by name.
    #[serde(default)]
    pub sums: BTreeMap<String, f64>,
    /// Checkpoints written before models named their sums hold the count of correct
    /// predictions here (read as the sum `accuracy`); new ones leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<i64>,
    /// Targets (samples or tokens) trained on in the window.
    pub samples: usize,
    /// The gradient norm of the window's last clipped step (none without clipping).
    pub grad_norm: Option<f64>,
}

impl WindowState {
    /// The sum `name`, also from a checkpoint written before sums were named.
    pub fn sum(&self, name: &str) -> f64 {
        match (self.sums.get(name), self.correct) {
            (Some(&s), _) => s,
            (None, Some(correct)) if name == "accuracy" => correct as f64,
            _ => 0.0,
        }
    }
}

/// The best validation result so far, by `checkpoint.best_metric`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Best {
    /// The metric compared (`valid.loss`, `valid.accuracy`, ...).
    pub metric: String,
    /// Its best value.
    pub value: f64,
    /// The step that reached it (the `best` checkpoint's).
    pub step: usize,
}

/// The names, ids and shapes of the tensors a checkpoint holds, as burn-store names them
/// (`layers.0.weight`), and which of them the optimizer updates.
pub struct ParamTable {
    entries: Vec<(String, ParamId, Vec<usize>)>,
    /// The parameters that require a gradient: those with optimizer state. Buffers such as
    /// batch norm's running statistics are saved with the weights but have none.
    trainable: HashSet<ParamId>,
}

impl ParamTable {
    /// The table of `model`'s parameters and buffers; with `adapters_only` (a LoRA fine-tune,
    /// whose frozen base comes from `model.init_from`) of the parameters that train only.
    pub fn of<B: Backend, M: Module<B>>(model: &M, adapters_only: bool) -> Self {
        struct Trainable(HashSet<ParamId>);
        impl<B: Backend> ModuleVisitor<B> for Trainable {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if param.val().is_require_grad() {
                    self.0.insert(param.id);
                }
            }
        }
        let mut trainable = Trainable(HashSet::new());
        model.visit(&mut trainable);
        let entries = model
            .collect(None, None, true)
            .into_iter()
            .filter_map(|s| Some((s.full_path(), s.tensor_id?, s.shape.to_vec())))
            .filter(|(_, id, _)| !adapters_only || trainable.0.contains(id))
            .collect();
        Self {
            entries,
            trainable: trainable.0,
        }
    }

    /// Whether the model holds tensors the optimizer does not update (running statistics).
    pub fn has_buffers(&self) -> bool {
        self.trainable.len() < self.entries.len()
    }

    /// The entries the optimizer updates.
    fn trainable(&self) -> impl Iterator<Item = &(String, ParamId, Vec<usize>)> {
        (self.entries.iter()).filter(|(_, id, _)| self.trainable.contains(id))
    }
}

/// Copies the model's parameters that `table` lists to host memory.
pub fn model_to_host<B: Backend, M: Module<B>>(
    model: &M,
    table: &ParamTable,
) -> Result<Vec<HostTensor>> {
    let saved: HashSet<ParamId> = table.entries.iter().map(|(_, id, _)| *id).collect();
    model
        .collect(None, None, true)
        .into_iter()
        .filter(|s| s.tensor_id.is_some_and(|id| saved.contains(&id)))
        .map(|s| {
            let name = s.full_path();
            let data = s
                .to_data()
                .map_err(|e| anyhow::anyhow!("cannot read parameter {name}: {e:?}"))?;
            host(name, data)
        })
        .collect()
}

/// Copies the optimizer's state to host memory, under `<param>.<buffer>` and `<param>.step`.
pub fn optimizer_to_host<B: AutodiffBackend>(
    optim: &Optim<B>,
    table: &ParamTable,
) -> Result<Vec<HostTensor>> {
    let mut out = Vec::new();
    for (name, id, shape) in &table.entries {
        let Some(state) = optim.state().get(id) else {
            continue;
        };
        out.push(HostTensor::i64_scalar(
            format!("{name}.step"),
            state.step as i64,
        ));
        for (buffer, t) in optim.buffer_names().iter().zip(&state.buffers) {
            let mut h = host(format!("{name}.{buffer}"), t.to_data())?;
            h.shape = shape.clone();
            out.push(h);
        }
    }
    Ok(out)
}

fn host(name: String, data: TensorData) -> Result<HostTensor> {
    if data.dtype != DType::F32 {
        bail!(
            "tensor {name} has dtype {:?}; checkpoints hold f32",
            data.dtype
        );
    }
    Ok(HostTensor {
        name,
        dtype: safetensors::Dtype::F32,
        shape: data.shape.to_vec(),
        data: Payload::Shared(Box::new(DataBytes(data.into_bytes()))),
    })
}

/// A backend's tensor bytes, handed to the checkpoint writer without another copy.
struct DataBytes(burn::tensor::Bytes);

impl AsRef<[u8]> for DataBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The tensors each file of a checkpoint must hold for this model and optimizer: name → shape.
fn expected<B: AutodiffBackend>(
    table: &ParamTable,
    optim: &Optim<B>,
) -> [(&'static str, BTreeMap<String, Vec<usize>>); 2] {
    let model = table
        .entries
        .iter()
        .map(|(n, _, s)| (n.clone(), s.clone()))
        .collect();
    let mut opt = BTreeMap::new();
    for (name, _, shape) in table.trainable() {
        opt.insert(format!("{name}.step"), vec![]);
        for b in optim.buffer_names() {
            opt.insert(format!("{name}.{b}"), shape.clone());
        }
    }
    [(MODEL_FILE, model), (OPTIMIZER_FILE, opt)]
}

/// Checks that a verified checkpoint holds exactly the tensors, shapes and dtypes this model
/// and optimizer have.
pub fn check_fits<B: AutodiffBackend>(
    v: &Verified,
    table: &ParamTable,
    optim: &Optim<B>,
) -> Result<(), CheckpointError> {
    for (file, want) in expected(table, optim) {
        let path = v.dir.join(file);
        let wrong = |detail: String| CheckpointError::WrongTensors {
            path: path.clone(),
            detail,
        };
        let Some(tensors) = v.files.get(file) else {
            return Err(CheckpointError::Damaged {
                path: path.clone(),
                reason: " is missing (not listed in state.json)".into(),
            });
        };
        let got: BTreeMap<&str, &HostTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for (name, shape) in &want {
            let Some(t) = got.get(name.as_str()) else {
                return Err(wrong(format!(
                    "tensor {name} is missing; the checkpoint was written for a different model or optimizer"
                )));
            };
            if &t.shape != shape {
                return Err(CheckpointError::ShapeMismatch {
                    path: path.clone(),
                    tensor: name.clone(),
                    shape: t.shape.clone(),
                    expected: shape.clone(),
                });
            }
            let dtype = if shape.is_empty() && name.ends_with(".step") {
                safetensors::Dtype::I64
            } else {
                safetensors::Dtype::F32
            };
            if t.dtype != dtype {
                return Err(wrong(format!(
                    "tensor {name} has dtype {:?}, expected {dtype:?}",
                    t.dtype
                )));
            }
        }
        if let Some(extra) = got.keys().find(|n| !want.contains_key(**n)) {
            return Err(wrong(format!(
                "unexpected tensor {extra}; the checkpoint was written for a different model or optimizer"
            )));
        }
    }
    Ok(())
}

/// Loads a checkpoint (already checked with [`check_fits`]) into the model and optimizer.
pub fn restore<B: AutodiffBackend, M: Module<B>>(
    v: &Verified,
    table: &ParamTable,
    model: M,
    optim: &mut Optim<B>,
    device: &B::Device,
) -> M {
    let by_name = |file: &str| -> HashMap<&str, &HostTensor> {
        v.files[file].iter().map(|t| (t.name.as_str(), t)).collect()
    };
    let params = by_name(MODEL_FILE);
    let opt = by_name(OPTIMIZER_FILE);
    let mut values = HashMap::new();
    let mut state = HashMap::new();
    for (name, id, shape) in &table.entries {
        values.insert(*id, device_data(params[name.as_str()], shape.clone()));
    }
    for (name, id, shape) in table.trainable() {
        let step = opt[format!("{name}.step").as_str()].as_i64().unwrap_or(0) as u64;
        let buffers = optim
            .buffer_names()
            .iter()
            .map(|b| {
                let t = opt[format!("{name}.{b}").as_str()];
                let n = shape.iter().product::<usize>();
                Tensor::<B::InnerBackend, 1>::from_data(device_data(t, vec![n]), device)
            })
            .collect();
        state.insert(*id, ParamState { step, buffers });
    }
    optim.set_state(state);
    model.map(&mut SetParams { values })
}

fn device_data(t: &HostTensor, shape: Vec<usize>) -> TensorData {
    TensorData::from_bytes_vec(t.data.to_vec(), shape, DType::F32)
}

/// Replaces parameter values by id, keeping each parameter's id and gradient requirement.
struct SetParams {
    values: HashMap<ParamId, TensorData>,
}

impl<B: Backend> ModuleMapper<B> for SetParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(data) = self.values.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let mut value = Tensor::<B, D>::from_data(data, &tensor.device());
        if require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Parses the trainer's part of a verified `state.json`.
pub fn train_state(v: &Verified) -> Result<TrainState> {
    serde_json::from_value(v.state.clone())
        .with_context(|| format!("{} is damaged", v.dir.join(STATE_FILE).display()))
}

/// Whether `path` is a checkpoint directory rather than a run directory.
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.join(STATE_FILE).is_file()
        || path
            .file_name()
            .and_then(|n| parse_step_dir(&n.to_string_lossy()))
            .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_saved_before_sums_were_named_reads_its_correct_count_as_the_accuracy_sum() {
        let old: WindowState = serde_json::from_str(
            r#"{"loss_sum": 12.5, "correct": 37, "samples": 64, "grad_norm": null}"#,
        )
        .unwrap();
        assert_eq!(old.sum("accuracy"), 37.0);
        assert_eq!(old.sum("rmse"), 0.0);
        assert_eq!((old.loss_sum, old.samples), (12.5, 64));
    }

    #[test]
    fn a_window_with_named_sums_round_trips_without_the_legacy_field() {
        let w = WindowState {
            loss_sum: 3.25,
            sums: [("accuracy".to_string(), 9.0), ("sq_err".to_string(), 0.5)].into(),
            correct: None,
            samples: 16,
            grad_norm: Some(1.5),
        };
        let json = serde_json::to_value(&w).unwrap();
        assert!(json.get("correct").is_none(), "{json}");
        let back: WindowState = serde_json::from_value(json).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.sum("sq_err"), 0.5);
    }
}
