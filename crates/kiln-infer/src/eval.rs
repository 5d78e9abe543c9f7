//! Evaluation on a split: the mean loss per target (per sample for classifiers, per token
//! position for language models) and the model's metrics ([`TrainModel::metrics`]).

use std::collections::BTreeMap;

use std::path::Path;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use kiln_core::Config;
use kiln_models::{Model, ModelConfig, Targets, TrainModel};
use serde::{Deserialize, Serialize};

use crate::data::{RunData, Split};
use crate::weights;

/// The loss and metrics over a whole split. As JSON, the metrics are fields beside `loss` and
/// `samples` (`{"loss": .., "accuracy": .., "samples": ..}` for a classifier).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    /// Mean loss per target.
    pub loss: f64,
    /// The model's metrics by name.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Number of targets evaluated (samples, or token positions).
    pub samples: usize,
}

impl EvalResult {
    /// The metric `name`, if the model logs one by that name.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// `{"loss": .., <each metric>: .., "samples": ..}` plus the fields of the object `fields`
    /// (e.g. the split and step), as Kiln's JSON outputs report an evaluation.
    pub fn json_with(&self, fields: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let (serde_json::Value::Object(o), serde_json::Value::Object(f)) = (&mut v, fields) {
            o.extend(f);
        }
        v
    }
}

/// Evaluates `model` on every batch of `batches` (e.g. [`RunData::eval_batches`]);
/// the error of the first batch that could not be read.
pub fn evaluate<B: Backend, M: TrainModel<B>>(
    model: &M,
    batches: impl Iterator<Item = Result<M::HostBatch>>,
    device: &B::Device,
) -> Result<EvalResult> {
    Ok(eval_sums(model, batches, device)?.finish(model))
}

/// Evaluates the weights in `weights_file` (a checkpoint's `model.safetensors`) of a run with
/// config `config` on `split` of the run's data, rebuilt exactly as the run saw it: what
/// `kiln eval` reports, as JSON with the split and the weights file.
pub fn eval_run<B: Backend>(
    config: &Config,
    weights_file: &Path,
    split: Split,
    device: &B::Device,
) -> Result<serde_json::Value> {
    let data = RunData::load(config)?;
    if !data.has(split) {
        bail!(
            "the run's data has no {} split (text and token data hold out a validation split only: use --split valid)",
            split.name()
        );
    }
    let model = Model::<B>::new(
        &ModelConfig::of(config)?,
        &data.shape(),
        config.train.precision,
        config.run.seed,
        device,
    )?;
    let model = weights::load_run(model, config, weights_file)?;
    let r = evaluate(&model, data.eval_batches(split, config), device)?;
    Ok(r.json_with(serde_json::json!({"split": split.name(), "weights": weights_file})))
}

/// The sums of an evaluation, before they become means and metrics: what data-parallel
/// workers add up over their shares of a split.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSums {
    /// The loss summed over all targets.
    pub loss_sum: f64,
    /// The model's sums ([`TrainModel::sum_names`]), in order.
    pub sums: Vec<f64>,
    /// Number of targets.
    pub targets: usize,
}

impl EvalSums {
    /// The mean loss and the model's metrics.
    pub fn finish<B: Backend, M: TrainModel<B>>(&self, model: &M) -> EvalResult {
        EvalResult {
            loss: self.loss_sum / self.targets.max(1) as f64,
            metrics: model
                .metrics(&self.sums, self.targets as f64)
                .into_iter()
                .collect(),
            samples: self.targets,
        }
    }
}

/// Runs `model` on every batch of `batches` and returns the summed loss and sums.
pub fn eval_sums<B: Backend, M: TrainModel<B>>(
    model: &M,
    batches: impl Iterator<Item = Result<M::HostBatch>>,
    device: &B::Device,
) -> Result<EvalSums> {
    let mut loss_sum = Tensor::<B, 1>::zeros([1], device);
    let mut sums = vec![Tensor::<B, 1>::zeros([1], device); model.sum_names().len()];
    let mut targets = 0;
    for batch in batches {
        let batch = batch?;
        if batch.targets() == 0 {
            continue;
        }
        targets += batch.targets();
        let out = model.loss(M::device_batch(batch, device));
        loss_sum = loss_sum + out.loss_sum;
        for (total, s) in sums.iter_mut().zip(out.sums) {
            *total = total.clone() + s;
        }
    }
    Ok(EvalSums {
        loss_sum: loss_sum.into_scalar().elem::<f64>(),
        sums: sums
            .into_iter()
            .map(|s| s.into_scalar().elem::<f64>())
            .collect(),
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_evaluation_reads_and_writes_the_json_of_earlier_versions() {
        // `last_valid` in a state.json written before metrics were named.
        let old = json!({"loss": 0.5, "accuracy": 0.875, "samples": 40});
        let r: EvalResult = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.metric("accuracy"), Some(0.875));
        assert_eq!((r.loss, r.samples), (0.5, 40));
        assert_eq!(serde_json::to_value(&r).unwrap(), old);
        assert_eq!(
            r.json_with(json!({"split": "test", "step": 7})),
            json!({"loss": 0.5, "accuracy": 0.875, "samples": 40, "split": "test", "step": 7})
        );
    }
}
