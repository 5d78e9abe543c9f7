//! AdamW in one pass: decoupled weight decay, both moment updates, bias correction and the step,
//! element by element over the parameter, its gradient and its two moment buffers, split across
//! rayon's threads.
//!
//! Every element goes through exactly the `f32` operations, in the same order, of the tensor-op
//! form (`p * (1 - lr wd)`, `m b1 + g (1 - b1)`, `v b2 + g g (1 - b2)`,
//! `p - m / (sqrt(v) / sqrt(1 - b2^t) + eps) * lr / (1 - b1^t)`, scalars rounded to `f32` as burn
//! rounds them), so the two give bit-identical parameters and state.

use rayon::prelude::*;

/// Elements per task; smaller parameters are updated on the calling thread.
const CHUNK: usize = 1 << 14;

/// One AdamW update's hyper-parameters, for update number `step` (1-based) of a parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (0 for parameters exempt from it).
    pub weight_decay: f64,
    /// 1 for a parameter's first update.
    pub step: u64,
}

/// The update's scalars, rounded to `f32` once, as a backend rounds a tensor-op scalar.
#[derive(Clone, Copy)]
struct Scalars {
    decay: Option<f32>,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    sqrt_bias2: f32,
    eps: f32,
    step_size: f32,
}

impl AdamW {
    fn scalars(&self) -> Scalars {
        let bias1 = 1.0 - self.beta1.powi(self.step as i32);
        let bias2 = 1.0 - self.beta2.powi(self.step as i32);
        Scalars {
            decay: (self.weight_decay > 0.0).then_some((1.0 - self.lr * self.weight_decay) as f32),
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            sqrt_bias2: bias2.sqrt() as f32,
            eps: self.eps as f32,
            step_size: (self.lr / bias1) as f32,
        }
    }

    /// Updates `param` in place from `grad`, and the moments `exp_avg`/`exp_avg_sq`. With
    /// `first`, the moments' previous contents are ignored (they start from the gradient, as
    /// when no state exists yet).
    ///
    /// # Panics
    /// If the four slices differ in length.
    pub fn update(
        &self,
        param: &mut [f32],
        grad: &[f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
        first: bool,
    ) {
        let n = param.len();
        assert!(
            grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n,
            "AdamW::update: parameter, gradient and moments differ in length"
        );
        let s = self.scalars();
        if n < 2 * CHUNK {
            chunk(&s, param, grad, exp_avg, exp_avg_sq, first);
            return;
        }
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(exp_avg.par_chunks_mut(CHUNK))
            .zip(exp_avg_sq.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| chunk(&s, p, g, m, v, first));
    }
}

#[inline]
fn chunk(s: &Scalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], first: bool) {
    let step = |p: &mut f32, m: f32, v: f32| {
        let decayed = match s.decay {
            Some(d) => *p * d,
            None => *p,
        };
        let denom = v.sqrt() / s.sqrt_bias2 + s.eps;
        *p = decayed - m / denom * s.step_size;
    };
    let it = p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
    if first {
        for (((p, &g), m), v) in it {
            *m = g * s.one_minus_beta1;
            *v = g * g * s.one_minus_beta2;
            step(p, *m, *v);
        }
    } else {
        for (((p, &g), m), v) in it {
            *m = *m * s.beta1 + g * s.one_minus_beta1;
            *v = *v * s.beta2 + g * g * s.one_minus_beta2;
            step(p, *m, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_update_rule_in_f64_closely() {
        let h = |step| AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
        };
        let (mut p, mut m, mut v) = (vec![1.0f32, -2.0], vec![0.0; 2], vec![0.0; 2]);
        h(1).update(&mut p, &[0.5, -1.0], &mut m, &mut v, true);
        h(2).update(&mut p, &[0.25, 2.0], &mut m, &mut v, false);
        let reference = |p0: f64, g: [f64; 2]| {
            let (b1, b2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8, 0.1, 0.1);
            let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
            for (i, g) in g.iter().enumerate() {
                let t = (i + 1) as i32;
                p *= 1.0 - lr * wd;
                m = b1 * m + (1.0 - b1) * g;
                v = b2 * v + (1.0 - b2) * g * g;
                p -= lr / (1.0 - b1.powi(t)) * m / (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps);
            }
            p
        };
        for (got, want) in p
            .iter()
            .zip([reference(1.0, [0.5, 0.25]), reference(-2.0, [-1.0, 2.0])])
        {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn threaded_and_serial_updates_are_identical() {
        let n = 5 * CHUNK + 123;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let h = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 3,
        };
        let start: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 97.0).collect();
        let (mut p1, mut m1, mut v1) = (start.clone(), start.clone(), start.clone());
        h.update(&mut p1, &g, &mut m1, &mut v1, false);
        let (mut p2, mut m2, mut v2) = (start.clone(), start.clone(), start);
        for i in (0..n).step_by(100) {
            let e = (i + 100).min(n);
            chunk(
                &h.scalars(),
                &mut p2[i..e],
                &g[i..e],
                &mut m2[i..e],
                &mut v2[i..e],
                false,
            );
        }
        assert_eq!((p1, m1, v1), (p2, m2, v2));
    }
}
