use super::*;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::{Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::backend::AutodiffBackend;

use crate::testing::{assert_close, on_threads};

/// Deterministic values of varied sign and size (`seed` picks the sequence).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 11) % 101) as f32 / 25.0 - 2.0) * (1.0 + seed as f32))
        .collect()
}

/// burn's module with `gamma` and `beta` set.
fn module<B: burn::tensor::backend::Backend>(
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
) -> BatchNorm<B> {
    let c = gamma.dims()[0];
    let mut bn = BatchNormConfig::new(c).init::<B>(&gamma.device());
    bn.gamma = Param::from_tensor(gamma);
    bn.beta = Param::from_tensor(beta);
    bn
}

/// Output, gradients (x, γ, β) of `sum(r * batch_norm(x))` in training, and the batch mean and
/// variance, by Kiln's kernel or burn's module (whose running averages, from zero mean and unit
/// variance with momentum 0.1, give the batch statistics back).
fn run<B: AutodiffBackend>(dims: [usize; 4], kiln: bool) -> Vec<Vec<f32>> {
    let device = Default::default();
    let [n, c, h, w] = dims;
    let len = n * c * h * w;
    let x =
        Tensor::<B, 4>::from_data(TensorData::new(values(len, 0), dims), &device).require_grad();
    let gamma =
        Tensor::<B, 1>::from_data(TensorData::new(values(c, 1), [c]), &device).require_grad();
    let beta =
        Tensor::<B, 1>::from_data(TensorData::new(values(c, 2), [c]), &device).require_grad();
    let (y, mean, var) = if kiln {
        let (y, m) = train(x.clone(), gamma.clone(), beta.clone(), 1e-5)
            .unwrap_or_else(|_| panic!("a CPU backend"));
        (y, m.mean, m.var)
    } else {
        let bn = module(gamma.clone(), beta.clone());
        let y = bn.forward(x.clone());
        let from_running = |r: &RunningState<Tensor<B, 1>>, start: f32| {
            let v = r.value_sync().into_data().to_vec::<f32>().unwrap();
            v.iter()
                .map(|v| (v - 0.9 * start) / 0.1)
                .collect::<Vec<_>>()
        };
        (
            y,
            from_running(&bn.running_mean, 0.0),
            from_running(&bn.running_var, 1.0),
        )
    };
    let r = Tensor::<B, 4>::from_data(TensorData::new(values(len, 3), dims), &device);
    let grads = (y.clone() * r).sum().backward();
    let flat = |t: Tensor<B::InnerBackend, 1>| t.into_data().to_vec::<f32>().unwrap();
    vec![
        y.inner().into_data().to_vec::<f32>().unwrap(),
        x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
        flat(gamma.grad(&grads).unwrap()),
        flat(beta.grad(&grads).unwrap()),
        mean,
        var,
    ]
}

/// The same six results as [`run`] computed in f64 from the formulas.
fn exact(dims: [usize; 4]) -> Vec<Vec<f32>> {
    let [n, c, h, w] = dims;
    let s = h * w;
    let m = (n * s) as f64;
    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let (x, gamma, beta, r) = (
        f64s(values(n * c * s, 0)),
        f64s(values(c, 1)),
        f64s(values(c, 2)),
        f64s(values(n * c * s, 3)),
    );
    let at = |i: usize, ch: usize, j: usize| (i * c + ch) * s + j;
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dgamma, mut dbeta, mut means, mut vars) = (vec![], vec![], vec![], vec![]);
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|i| (0..s).map(move |j| at(i, ch, j)))
            .collect();
        let mean = idx.iter().map(|&k| x[k]).sum::<f64>() / m;
        let var = idx.iter().map(|&k| (x[k] - mean).powi(2)).sum::<f64>() / m;
        let inv = 1.0 / (var + 1e-5).sqrt();
        let xhat = |k: usize| (x[k] - mean) * inv;
        let sum_dy = idx.iter().map(|&k| r[k]).sum::<f64>();
        let sum_dy_xhat = idx.iter().map(|&k| r[k] * xhat(k)).sum::<f64>();
        for &k in &idx {
            y[k] = xhat(k) * gamma[ch] + beta[ch];
            dx[k] = gamma[ch] * inv * (r[k] - sum_dy / m - xhat(k) * sum_dy_xhat / m);
        }
        dgamma.push(sum_dy_xhat);
        dbeta.push(sum_dy);
        means.push(mean);
        vars.push(var);
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
    vec![
        f32s(y),
        f32s(dx),
        f32s(dgamma),
        f32s(dbeta),
        f32s(means),
        f32s(vars),
    ]
}

const WHAT: [&str; 6] = [
    "output",
    "x grad",
    "gamma grad",
    "beta grad",
    "batch mean",
    "batch variance",
];

/// Kiln's kernel is within 2e-5 of the exact results, and burn's module (what the models ran
/// before) agrees with it to burn's own rounding (5e-4; its running averages, from which the
/// batch statistics are read back here, lose digits in the subtraction).
fn matches_burn<B: AutodiffBackend>() {
    for dims in [[2, 3, 4, 5], [7, 16, 6, 6], [5, 4, 1, 1]] {
        let ours = run::<B>(dims, true);
        let theirs = run::<B>(dims, false);
        let want = exact(dims);
        for (i, what) in WHAT.iter().enumerate() {
            let what = format!("{what} ({dims:?})");
            assert_close(&format!("{what}, Kiln vs exact"), &ours[i], &want[i], 2e-5);
            assert_close(&format!("{what}, Kiln vs burn"), &ours[i], &theirs[i], 5e-4);
        }
    }
}

#[test]
fn batch_norm_matches_burns_in_output_gradients_and_statistics() {
    matches_burn::<Autodiff<Flex>>();
    matches_burn::<Autodiff<NdArray>>();
}

#[test]
fn batch_norm_gives_the_same_bits_on_one_thread_and_on_many() {
    let on = |threads| on_threads(threads, || run::<Autodiff<Flex>>([9, 5, 7, 3], true));
    assert_eq!(on(1), on(3));
}

#[test]
fn inference_with_given_statistics_matches_burns_module() {
    let device = Default::default();
    let dims = [3, 4, 5, 2];
    let len = dims.iter().product::<usize>();
    let x = Tensor::<Flex, 4>::from_data(TensorData::new(values(len, 0), dims), &device);
    let gamma = Tensor::<Flex, 1>::from_data(TensorData::new(values(4, 1), [4]), &device);
    let beta = Tensor::<Flex, 1>::from_data(TensorData::new(values(4, 2), [4]), &device);
    let moments = Moments {
        mean: vec![0.5, -1.0, 0.0, 2.0],
        var: vec![1.0, 0.25, 4.0, 0.1],
    };
    let ours = infer(x.clone(), gamma.clone(), beta.clone(), &moments, 1e-5)
        .unwrap_or_else(|_| panic!("flex"));
    let mut bn = module(gamma, beta);
    let stat =
        |v: &Vec<f32>| Tensor::<Flex, 1>::from_data(TensorData::new(v.clone(), [4]), &device);
    bn.running_mean = RunningState::new(stat(&moments.mean));
    bn.running_var = RunningState::new(stat(&moments.var));
    let theirs = bn.forward(x);
    assert_close(
        "inference",
        &ours.into_data().to_vec::<f32>().unwrap(),
        &theirs.into_data().to_vec::<f32>().unwrap(),
        1e-6,
    );
}

#[test]
fn shapes_it_does_not_cover_come_back() {
    let device = Default::default();
    let x = Tensor::<Flex, 2>::zeros([2, 3], &device);
    let wrong = Tensor::<Flex, 1>::ones([4], &device);
    assert!(train(x, wrong.clone(), wrong, 1e-5).is_err());
}
