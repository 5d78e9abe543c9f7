//! Kiln's optimizers: AdamW and SGD with PyTorch's update rules (`torch.optim.AdamW`,
//! `torch.optim.SGD` with dampening 0), applied through burn's module mapper.
//!
//! They are Kiln's own rather than burn's because a checkpoint must store every state tensor
//! under its parameter's name, and burn 0.21's optimizer records hide some of their tensors
//! (SGD's momentum velocity is private). Here the state of each parameter is plain data:
//! a step count and named buffers (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, PyTorch's names).

use std::collections::{HashMap, HashSet};

use burn::module::{AutodiffModule, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use kiln_core::config::{OptimizerKind, OptimizerSection};

/// The update rule and its hyper-parameters.
#[derive(Clone, Copy, Debug)]
enum Rule {
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
}

impl Rule {
    fn without_decay(self) -> Rule {
        match self {
            Rule::AdamW {
                beta1, beta2, eps, ..
            } => Rule::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay: 0.0,
            },
            Rule::Sgd {
                momentum, nesterov, ..
            } => Rule::Sgd {
                momentum,
                nesterov,
                weight_decay: 0.0,
            },
        }
    }
}

/// The optimizer state of one parameter: how many updates it has had and its buffers, in the
/// order of [`Optim::buffer_names`], each with the parameter's shape.
#[derive(Clone, Debug)]
pub struct ParamState<B: Backend> {
    /// Updates applied to the parameter (PyTorch's `state["step"]`).
    pub step: u64,
    /// The buffers, flattened.
    pub buffers: Vec<Tensor<B, 1>>,
}

/// An optimizer and the state of every parameter it has updated.
pub struct Optim<B: AutodiffBackend> {
    rule: Rule,
    state: HashMap<ParamId, ParamState<B::InnerBackend>>,
    /// Parameters updated without weight decay (biases, norms, embeddings).
    no_decay: HashSet<ParamId>,
}

impl<B: AutodiffBackend> Optim<B> {
    /// The optimizer of an `[optimizer]` section, with no state yet.
    pub fn new(s: &OptimizerSection) -> Self {
        let rule = match s.kind {
            OptimizerKind::Adamw => Rule::AdamW {
                beta1: s.betas[0],
                beta2: s.betas[1],
                eps: s.eps,
                weight_decay: s.weight_decay,
            },
            OptimizerKind::Sgd => Rule::Sgd {
                momentum: s.momentum,
                nesterov: s.nesterov,
                weight_decay: s.weight_decay,
            },
        };
        Self {
            rule,
            state: HashMap::new(),
            no_decay: HashSet::new(),
        }
    }

    /// Exempts `params` from weight decay (PyTorch users get this with two parameter groups).
    pub fn without_decay(mut self, params: HashSet<ParamId>) -> Self {
        self.no_decay = params;
        self
    }

    /// Names of the per-parameter buffers, as PyTorch names them.
    pub fn buffer_names(&self) -> &'static [&'static str] {
        match self.rule {
            Rule::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
            Rule::Sgd { momentum, .. } if momentum > 0.0 => &["momentum_buffer"],
            Rule::Sgd { .. } => &[],
        }
    }

    /// Applies one update with learning rate `lr` to every parameter that has a gradient.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        model: M,
        mut grads: GradientsParams,
    ) -> M {
        model.map(&mut Update::<B> {
            rule: self.rule,
            no_decay: &self.no_decay,
            state: &mut self.state,
            grads: &mut grads,
            lr,
        })
    }

    /// The state of every parameter updated so far, by parameter id.
    pub fn state(&self) -> &HashMap<ParamId, ParamState<B::InnerBackend>> {
        &self.state
    }

    /// Replaces the whole state (when resuming from a checkpoint).
    pub fn set_state(&mut self, state: HashMap<ParamId, ParamState<B::InnerBackend>>) {
        self.state = state;
    }
}

struct Update<'a, B: AutodiffBackend> {
    rule: Rule,
    no_decay: &'a HashSet<ParamId>,
    state: &'a mut HashMap<ParamId, ParamState<B::InnerBackend>>,
    grads: &'a mut GradientsParams,
    lr: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let old = self.state.remove(&id);
        let rule = if self.no_decay.contains(&id) {
            self.rule.without_decay()
        } else {
            self.rule
        };
        let (value, state) = update(rule, self.lr, tensor.inner(), grad, old);
        if let Some(state) = state {
            self.state.insert(id, state);
        }
        let mut tensor = Tensor::from_inner(value);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// One parameter's update, term for term as PyTorch's single-tensor implementations. On a CPU
/// backend AdamW runs as one fused pass ([`kiln_kernels::adamw`]) with the same result, bit for
/// bit, as the tensor operations below.
fn update<B: Backend, const D: usize>(
    rule: Rule,
    lr: f64,
    p: Tensor<B, D>,
    g: Tensor<B, D>,
    old: Option<ParamState<B>>,
) -> (Tensor<B, D>, Option<ParamState<B>>) {
    let (p, g, old) = match fused_adamw(rule, lr, p, g, old) {
        Ok(done) => return done,
        Err(declined) => declined,
    };
    update_by_tensor_ops(rule, lr, p, g, old)
}

/// What [`fused_adamw`] gives back when it cannot run: its inputs, untouched.
type Declined<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<ParamState<B>>);

/// AdamW in place on the host buffers of a CPU backend's tensors, or the inputs back (another
/// rule or backend, or a layout the kernel cannot borrow).
#[allow(clippy::type_complexity)]
fn fused_adamw<B: Backend, const D: usize>(
    rule: Rule,
    lr: f64,
    p: Tensor<B, D>,
    g: Tensor<B, D>,
    old: Option<ParamState<B>>,
) -> Result<(Tensor<B, D>, Option<ParamState<B>>), Declined<B, D>> {
    use kiln_kernels::host::HostTensor;
    let Rule::AdamW {
        beta1,
        beta2,
        eps,
        weight_decay,
    } = rule
    else {
        return Err((p, g, old));
    };
    let device = p.device();
    let step = old.as_ref().map_or(0, |s| s.step) + 1;
    let mut p = match HostTensor::new(p) {
        Ok(h) => h,
        Err(p) => return Err((p, g, old)),
    };
    let g = match HostTensor::new(g) {
        Ok(h) => h,
        Err(g) => return Err((p.into_tensor(), g, old)),
    };
    let n = p.len();
    let (mut m, mut v, first) = match old {
        Some(ParamState { buffers, .. }) if buffers.len() == 2 => {
            let mut it = buffers.into_iter();
            let (m, v) = (it.next().expect("two"), it.next().expect("two"));
            match (HostTensor::new(m), HostTensor::new(v)) {
                (Ok(m), Ok(v)) => (m, v, false),
                (m, v) => {
                    let back = |b: Result<HostTensor<B, 1>, Tensor<B, 1>>| {
                        b.map_or_else(|t| t, HostTensor::into_tensor)
                    };
                    let state = ParamState {
                        step: step - 1,
                        buffers: vec![back(m), back(v)],
                    };
                    return Err((p.into_tensor(), g.into_tensor(), Some(state)));
                }
            }
        }
        _ => {
            let zeros = || {
                HostTensor::new(Tensor::<B, 1>::zeros([n], &device))
                    .unwrap_or_else(|_| unreachable!("a CPU backend's fresh tensor is contiguous"))
            };
            (zeros(), zeros(), true)
        }
    };
    kiln_kernels::adamw::AdamW {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        step,
    }
    .update(
        p.as_mut_slice(),
        g.as_slice(),
        m.as_mut_slice(),
        v.as_mut_slice(),
        first,
    );
    let state = ParamState {
        step,
        buffers: vec![m.into_tensor(), v.into_tensor()],
    };
    Ok((p.into_tensor(), Some(state)))
}

/// [`update`] by burn's tensor operations (any backend).
fn update_by_tensor_ops<B: Backend, const D: usize>(
    rule: Rule,
    lr: f64,
    p: Tensor<B, D>,
    g: Tensor<B, D>,
    old: Option<ParamState<B>>,
) -> (Tensor<B, D>, Option<ParamState<B>>) {
    let dims = p.dims();
    let step = old.as_ref().map_or(0, |s| s.step) + 1;
    let mut buffers = old
        .map(|s| {
            s.buffers
                .into_iter()
                .map(|b| b.reshape(dims))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter();
    let flat = |t: Tensor<B, D>| t.reshape([dims.iter().product::<usize>()]);
    match rule {
        Rule::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let p = if weight_decay > 0.0 {
                p.mul_scalar(1.0 - lr * weight_decay)
            } else {
                p
            };
            let (m, v) = match (buffers.next(), buffers.next()) {
                (Some(m), Some(v)) => (
                    m.mul_scalar(beta1).add(g.clone().mul_scalar(1.0 - beta1)),
                    v.mul_scalar(beta2)
                        .add(g.clone().mul(g).mul_scalar(1.0 - beta2)),
                ),
                _ => (
                    g.clone().mul_scalar(1.0 - beta1),
                    g.clone().mul(g).mul_scalar(1.0 - beta2),
                ),
            };
            let bias1 = 1.0 - beta1.powi(step as i32);
            let bias2 = 1.0 - beta2.powi(step as i32);
            let denom = v.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(eps);
            let p = p.sub(m.clone().div(denom).mul_scalar(lr / bias1));
            let state = ParamState {
                step,
                buffers: vec![flat(m), flat(v)],
            };
            (p, Some(state))
        }
        Rule::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let g = if weight_decay > 0.0 {
                g.add(p.clone().mul_scalar(weight_decay))
            } else {
                g
            };
            if momentum == 0.0 {
                let state = ParamState {
                    step,
                    buffers: vec![],
                };
                return (p.sub(g.mul_scalar(lr)), Some(state));
            }
            let buf = match buffers.next() {
                Some(b) => b.mul_scalar(momentum).add(g.clone()),
                None => g.clone(),
            };
            let direction = if nesterov {
                g.add(buf.clone().mul_scalar(momentum))
            } else {
                buf.clone()
            };
            let state = ParamState {
                step,
                buffers: vec![flat(buf)],
            };
            (p.sub(direction.mul_scalar(lr)), Some(state))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type Inner = Flex;

    fn t(v: &[f32]) -> Tensor<Inner, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    fn run(rule: Rule, steps: &[(f64, [f32; 2])]) -> Vec<f32> {
        let mut p = t(&[1.0, -2.0]);
        let mut state = None;
        for (lr, g) in steps {
            let (np, ns) = update(rule, *lr, p, t(g), state);
            p = np;
            state = ns;
        }
        p.into_data().to_vec().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    // Reference values computed by hand from PyTorch's documented update rules.
    #[test]
    fn adamw_matches_pytorch_rule() {
        let rule = Rule::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let got = run(rule, &[(0.1, [0.5, -1.0]), (0.1, [0.25, 2.0])]);
        let reference = |p0: f64, g: [f64; 2]| {
            let (b1, b2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8, 0.1, 0.1);
            let mut p = p0;
            let (mut m, mut v) = (0.0, 0.0);
            for (i, g) in g.iter().enumerate() {
                let t = (i + 1) as i32;
                p *= 1.0 - lr * wd;
                m = b1 * m + (1.0 - b1) * g;
                v = b2 * v + (1.0 - b2) * g * g;
                let denom = (v.sqrt() / (1.0 - b2.powi(t)).sqrt()) + eps;
                p -= lr / (1.0 - b1.powi(t)) * m / denom;
            }
            p
        };
        close(
            &got,
            &[reference(1.0, [0.5, 0.25]), reference(-2.0, [-1.0, 2.0])],
        );
    }

    /// An update function of rank-1 parameters: `update` or `update_by_tensor_ops`.
    type UpdateFn<B> = fn(
        Rule,
        f64,
        Tensor<B, 1>,
        Tensor<B, 1>,
        Option<ParamState<B>>,
    ) -> (Tensor<B, 1>, Option<ParamState<B>>);

    /// Three AdamW steps of a parameter large enough for the threaded kernel, by `f`.
    fn three_steps<B: Backend>(f: UpdateFn<B>) -> Vec<Vec<f32>> {
        let n = 70_001;
        let device = Default::default();
        let host = |k: usize| -> Tensor<B, 1> {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 + k * 104_729) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            Tensor::from_data(TensorData::new(v, [n]), &device)
        };
        let rule = Rule::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let (mut p, mut state) = (host(0), None);
        for k in 1..=3 {
            (p, state) = f(rule, 3e-3 * k as f64, p, host(k), state);
        }
        let mut out = vec![p.into_data().to_vec().unwrap()];
        for b in state.unwrap().buffers {
            out.push(b.into_data().to_vec().unwrap());
        }
        out
    }

    #[test]
    fn fused_adamw_equals_the_tensor_ops_bit_for_bit_on_flex() {
        assert!(kiln_kernels::host::is_host_backend::<Inner>(
            &Default::default()
        ));
        let fused = three_steps::<Inner>(update);
        let ops = three_steps::<Inner>(update_by_tensor_ops);
        assert_eq!(fused.len(), 3);
        for (a, b) in fused.iter().zip(&ops) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn fused_adamw_agrees_with_the_tensor_ops_on_ndarray() {
        use burn::backend::NdArray;
        assert!(kiln_kernels::host::is_host_backend::<NdArray>(
            &Default::default()
        ));
        let fused = three_steps::<NdArray>(update);
        let ops = three_steps::<NdArray>(update_by_tensor_ops);
        for (a, b) in fused.iter().zip(&ops) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn sgd_nesterov_matches_pytorch_rule() {
        let rule = Rule::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
        };
        let got = run(rule, &[(0.1, [0.5, -1.0]), (0.1, [0.25, 2.0])]);
        let reference = |p0: f64, g: [f64; 2]| {
            let (mu, wd, lr) = (0.9, 0.01, 0.1);
            let mut p = p0;
            let mut buf: Option<f64> = None;
            for g in g {
                let g = g + wd * p;
                let b = buf.map_or(g, |b| mu * b + g);
                buf = Some(b);
                p -= lr * (g + mu * b);
            }
            p
        };
        close(
            &got,
            &[reference(1.0, [0.5, 0.25]), reference(-2.0, [-1.0, 2.0])],
        );
    }
}
