//! A regression head: a model with one output that predicts a number (`data.task =
//! "regression"`).
//!
//! The network learns the target standardized with the training split's mean and standard
//! deviation, so that the loss (`train.loss`: MSE, MAE or Huber) is measured in standard
//! deviations whatever the target's units, while predictions ([`crate::Model::forward`]) and
//! the metrics are in the target's own units: RMSE, MAE and R^2, computed from sums over a
//! split so that they add up exactly over batches and workers.

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
pub use kiln_core::config::RegressionLoss;
use serde::{Deserialize, Serialize};

use crate::LossOutput;

/// What a regression's one output means and how it is trained.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// The loss minimized (on the standardized target).
    pub loss: RegressionLoss,
    /// The training targets' mean.
    pub mean: f32,
    /// The training targets' (population) standard deviation, positive.
    pub std: f32,
}

/// The sums behind [`Regression::metrics`], all of the standardized target `y` and prediction
/// `z`: `(z - y)^2`, `|z - y|`, `y` and `y^2`.
pub const SUM_NAMES: [&str; 4] = ["sq_err", "abs_err", "target", "target_sq"];

impl Regression {
    /// The statistics of the training split's `targets` and the loss to train with.
    ///
    /// # Errors
    /// No targets, a target that is not finite, or a constant target (nothing to learn).
    pub fn fit(targets: &[f32], loss: RegressionLoss) -> Result<Regression> {
        if targets.is_empty() {
            bail!("the training split has no targets to fit a regression to");
        }
        if let Some(t) = targets.iter().find(|t| !t.is_finite()) {
            bail!("a training target is {t}; a regression needs finite numbers");
        }
        let n = targets.len() as f64;
        let mean = targets.iter().map(|&t| f64::from(t)).sum::<f64>() / n;
        let var = targets
            .iter()
            .map(|&t| (f64::from(t) - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        if std == 0.0 || (std as f32) == 0.0 {
            bail!(
                "every training target is {mean}; a regression needs a target that varies \
                 (is the label column the right one?)"
            );
        }
        Ok(Regression {
            loss,
            mean: mean as f32,
            std: std as f32,
        })
    }

    /// The network's standardized outputs `[n, 1]` as predictions in the target's units.
    pub fn to_units<B: Backend>(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        z.mul_scalar(self.std).add_scalar(self.mean)
    }

    /// The loss summed over a batch and the [`SUM_NAMES`] sums, from the network's standardized
    /// outputs `z` (`[n, 1]`) and the targets `y` in their units (`[n]`).
    pub fn sums<B: Backend>(&self, z: Tensor<B, 2>, y: Tensor<B, 1>) -> LossOutput<B> {
        let [n, _] = z.dims();
        let y = y.sub_scalar(self.mean).div_scalar(self.std);
        let err = z.reshape([n]) - y.clone();
        let abs = err.clone().abs();
        let sq = err.powi_scalar(2);
        let loss_sum = match self.loss {
            RegressionLoss::Mse => sq.clone().sum(),
            RegressionLoss::Mae => abs.clone().sum(),
            // 0.5 e^2 within one standard deviation, |e| - 0.5 beyond: with q = min(|e|, 1),
            // 0.5 q^2 + (|e| - q), whose gradient is e inside and sign(e) outside.
            RegressionLoss::Huber => {
                let q = abs.clone().clamp_max(1.0);
                (q.clone().powi_scalar(2).mul_scalar(0.5) + (abs.clone() - q)).sum()
            }
        };
        let sums = vec![
            sq.sum().detach(),
            abs.sum().detach(),
            y.clone().sum(),
            y.powi_scalar(2).sum(),
        ];
        LossOutput::new(loss_sum, sums)
    }

    /// RMSE and MAE in the target's units and R^2, from the [`SUM_NAMES`] sums over `n`
    /// targets. R^2 is 1 minus the squared error over the targets' spread about their own
    /// mean (0 for a split of one target).
    pub fn metrics(&self, sums: &[f64], n: f64) -> Vec<(String, f64)> {
        let n = n.max(1.0);
        let std = f64::from(self.std);
        let spread = sums[3] - sums[2] * sums[2] / n;
        let r2 = if spread > 0.0 {
            1.0 - sums[0] / spread
        } else {
            0.0
        };
        vec![
            ("rmse".into(), std * (sums[0] / n).sqrt()),
            ("mae".into(), std * sums[1] / n),
            ("r2".into(), r2),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type B = Autodiff<Flex>;

    fn tensor2(v: &[f32]) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [v.len(), 1]),
            &Default::default(),
        )
    }

    fn tensor1(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    #[test]
    fn fit_takes_the_training_statistics_and_refuses_a_constant_target() {
        let r = Regression::fit(&[1.0, 3.0, 5.0, 7.0], RegressionLoss::Mse).unwrap();
        assert_eq!(r.mean, 4.0);
        assert!((r.std - 5f32.sqrt()).abs() < 1e-6);
        let e = Regression::fit(&[2.0; 5], RegressionLoss::Mse).unwrap_err();
        assert!(e.to_string().contains("every training target is 2"), "{e}");
        assert!(Regression::fit(&[1.0, f32::NAN], RegressionLoss::Mse).is_err());
    }

    #[test]
    fn metrics_are_in_the_targets_units_and_r2_is_the_textbook_one() {
        let r = Regression {
            loss: RegressionLoss::Mse,
            mean: 10.0,
            std: 2.0,
        };
        // Targets 8, 10, 14 (standardized -1, 0, 2); predictions 9, 10, 12 (-0.5, 0, 1).
        let y = [8.0, 10.0, 14.0];
        let z = [-0.5, 0.0, 1.0];
        let out = r.sums(tensor2(&z), tensor1(&y));
        let sums: Vec<f64> = out
            .sums
            .iter()
            .map(|s| f64::from(s.clone().into_scalar()))
            .collect();
        let m: std::collections::BTreeMap<String, f64> =
            r.metrics(&sums, 3.0).into_iter().collect();
        let errors = [1.0f64, 0.0, 2.0];
        let rmse = (errors.iter().map(|e| e * e).sum::<f64>() / 3.0).sqrt();
        assert!((m["rmse"] - rmse).abs() < 1e-6, "{m:?}");
        assert!((m["mae"] - 1.0).abs() < 1e-6, "{m:?}");
        let mean = 32.0 / 3.0;
        let spread: f64 = y.iter().map(|&t| (f64::from(t) - mean).powi(2)).sum();
        assert!((m["r2"] - (1.0 - 5.0 / spread)).abs() < 1e-6, "{m:?}");
        // The MSE loss is in standard deviations: (0.5^2 + 0 + 1^2).
        assert!((out.loss_sum.into_scalar() - 1.25).abs() < 1e-6);
    }

    #[test]
    fn each_loss_has_its_value_and_gradient() {
        let y = [0.0, 0.0, 0.0];
        let z = [0.5, -3.0, 2.0];
        let expect = [
            (RegressionLoss::Mse, 0.25 + 9.0 + 4.0, [1.0, -6.0, 4.0]),
            (RegressionLoss::Mae, 5.5, [1.0, -1.0, 1.0]),
            (RegressionLoss::Huber, 0.125 + 2.5 + 1.5, [0.5, -1.0, 1.0]),
        ];
        for (loss, value, grad) in expect {
            let r = Regression {
                loss,
                mean: 0.0,
                std: 1.0,
            };
            let z = tensor2(&z).require_grad();
            let out = r.sums(z.clone(), tensor1(&y));
            let got = out.loss_sum.clone().into_scalar();
            assert!((got - value).abs() < 1e-6, "{loss:?}: {got} vs {value}");
            let grads = out.loss_sum.backward();
            let g: Vec<f32> = z.grad(&grads).unwrap().into_data().to_vec().unwrap();
            assert_eq!(g, grad, "{loss:?}");
        }
    }
}
