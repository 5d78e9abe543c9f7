//! The exact GELU, `x Φ(x)` with `Φ` the standard normal CDF, and its derivative
//! `Φ(x) + x φ(x)`, without a scalar `erf` call per element; and GPT-2's tanh form
//! (`gelu_new` in Hugging Face's transformers, PyTorch's `gelu(approximate="tanh")`),
//! `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`, by the same `exp`.
//!
//! Each element is computed in `f64` with branch-free arithmetic that the compiler vectorizes:
//! `Φ(x) = erfc(-x / √2) / 2`, with `erfc` by the Chebyshev fit of Numerical Recipes' `erfcc`
//! (`t exp(-z² + P(t))`, `t = 1 / (1 + z/2)`, fractional error below 1.2e-7 everywhere, so `Φ` is
//! accurate relative to itself also far in the lower tail), and `exp` by range reduction to
//! `[-ln2/2, ln2/2]` and a degree-10 Taylor polynomial. The result, rounded to `f32`, is within
//! 2e-7 relative of the exact GELU (tested against `libm::erfc` in f64); burn's flex backend calls
//! `libm::erff` per element on one thread. The loops are compiled for AVX-512 and AVX2 as well as
//! the baseline and chosen at run time; they use no fused multiply-add, so every CPU gives the
//! same bits.

use crate::op::HostUnary;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1 / √(2π).
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `e^y` for `y <= 700` (below -708 it returns `e^-708`, which is 0 in `f32`).
#[inline(always)]
fn exp(y: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let y = y.max(-708.0);
    let k = (y * std::f64::consts::LOG2_E + 0.5).floor();
    let r = (y - k * LN2_HI) - k * LN2_LO;
    // Taylor series of e^r to r^10 / 10!: below 1e-12 relative for |r| <= ln2 / 2.
    let mut p = 1.0 / 3_628_800.0;
    for c in [
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // 2^k from k's integer bits: adding 1.5 * 2^52 puts k in the low mantissa bits.
    let k_bits = (k + 6_755_399_441_055_744.0).to_bits();
    let scale = f64::from_bits(k_bits.wrapping_add(1023) << 52);
    p * scale
}

/// `Φ(x)` and, for the derivative, `φ(x)`.
#[inline(always)]
fn cdf_pdf(x: f64) -> (f64, f64) {
    let z = x.abs() * FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77;
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = p * t + c;
    }
    let half_erfc = 0.5 * t * exp(-z * z + p);
    let cdf = if x < 0.0 { half_erfc } else { 1.0 - half_erfc };
    (cdf, exp(-0.5 * x * x) * INV_SQRT_2PI)
}

#[inline(always)]
fn forward_scalar(x: f32) -> f32 {
    let x = x as f64;
    (x * cdf_pdf(x).0) as f32
}

#[inline(always)]
fn derivative_scalar(x: f32) -> f64 {
    let x = x as f64;
    let (cdf, pdf) = cdf_pdf(x);
    cdf + x * pdf
}

#[inline(always)]
fn forward_loop(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = forward_scalar(x);
    }
}

#[inline(always)]
fn backward_loop(x: &[f32], g: &mut [f32]) {
    for (g, &x) in g.iter_mut().zip(x) {
        *g = (*g as f64 * derivative_scalar(x)) as f32;
    }
}

crate::simd::multiversion!(forward_loop => forward_v4, forward_v3, forward_dispatch(x: &[f32], y: &mut [f32]));
crate::simd::multiversion!(backward_loop => backward_v4, backward_v3, backward_dispatch(x: &[f32], g: &mut [f32]));

/// √(2/π).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of GPT-2's tanh GELU.
const TANH_CUBIC: f64 = 0.044_715;

/// `tanh(u)` as `1 - 2 / (e^{2|u|} + 1)` with `u`'s sign: within a few f64 rounding errors in
/// absolute terms, which is what `x/2 (1 + tanh)` and its derivative need.
#[inline(always)]
fn tanh(u: f64) -> f64 {
    let e = exp(2.0 * u.abs().min(350.0));
    (1.0 - 2.0 / (e + 1.0)).copysign(u)
}

#[inline(always)]
fn tanh_forward_scalar(x: f32) -> f32 {
    let x = x as f64;
    let t = tanh(SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x));
    (0.5 * x * (1.0 + t)) as f32
}

#[inline(always)]
fn tanh_derivative_scalar(x: f32) -> f64 {
    let x = x as f64;
    let t = tanh(SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_CUBIC * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

#[inline(always)]
fn tanh_forward_loop(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = tanh_forward_scalar(x);
    }
}

#[inline(always)]
fn tanh_backward_loop(x: &[f32], g: &mut [f32]) {
    for (g, &x) in g.iter_mut().zip(x) {
        *g = (*g as f64 * tanh_derivative_scalar(x)) as f32;
    }
}

crate::simd::multiversion!(tanh_forward_loop => tanh_forward_v4, tanh_forward_v3, tanh_forward_dispatch(x: &[f32], y: &mut [f32]));
crate::simd::multiversion!(tanh_backward_loop => tanh_backward_v4, tanh_backward_v3, tanh_backward_dispatch(x: &[f32], g: &mut [f32]));

/// GPT-2's tanh GELU as a [`HostUnary`] operation.
#[derive(Clone, Copy, Debug)]
pub struct GeluTanh;

impl HostUnary for GeluTanh {
    fn forward(self, x: &[f32], y: &mut [f32]) {
        tanh_forward_dispatch(x, y)
    }

    fn backward(self, x: &[f32], grad: &mut [f32]) {
        tanh_backward_dispatch(x, grad)
    }
}

/// GELU as a [`HostUnary`] operation.
#[derive(Clone, Copy, Debug)]
pub struct Gelu;

impl HostUnary for Gelu {
    fn forward(self, x: &[f32], y: &mut [f32]) {
        forward_dispatch(x, y)
    }

    fn backward(self, x: &[f32], grad: &mut [f32]) {
        backward_dispatch(x, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Φ` in f64 by `erfc`, exact also where `1 + erf` would cancel.
    fn cdf(x: f64) -> f64 {
        0.5 * libm::erfc(-x * FRAC_1_SQRT_2)
    }

    fn exact(x: f64) -> f64 {
        x * cdf(x)
    }

    fn grid() -> Vec<f32> {
        // Every 1/512 over [-12, 12], plus values near 0 and the f32 extremes of interest.
        let mut v: Vec<f32> = (-6144..=6144).map(|i| i as f32 / 512.0).collect();
        v.extend([
            1e-30, -1e-30, 1e-8, -1e-8, 3.3e-3, -3.3e-3, 20.0, -13.5, 50.0, -50.0,
        ]);
        v
    }

    #[test]
    fn gelu_is_within_2e_7_relative_of_the_exact_one() {
        let x = grid();
        let mut y = vec![0.0; x.len()];
        Gelu.forward(&x, &mut y);
        let mut worst = 0.0f64;
        for (&x, &y) in x.iter().zip(&y) {
            let want = exact(x as f64);
            // Past x = -13.5 the exact value is below f32's smallest normal number.
            if want.abs() < f32::MIN_POSITIVE as f64 {
                assert!(
                    y.abs() <= 2.0 * f32::MIN_POSITIVE,
                    "gelu({x}) = {y}, want {want}"
                );
                continue;
            }
            worst = worst.max(((y as f64 - want) / want).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
    }

    #[test]
    fn the_derivative_matches_the_exact_one() {
        let x = grid();
        let mut g = vec![1.0f32; x.len()];
        Gelu.backward(&x, &mut g);
        for (&x, &g) in x.iter().zip(&g) {
            let xd = x as f64;
            let cdf = cdf(xd);
            let pdf = (-0.5 * xd * xd).exp() * INV_SQRT_2PI;
            let want = cdf + xd * pdf;
            // The two terms nearly cancel far in the lower tail: judge against their size.
            let scale = cdf
                .abs()
                .max((xd * pdf).abs())
                .max(f32::MIN_POSITIVE as f64);
            assert!(
                ((g as f64) - want).abs() <= 3e-7 * scale,
                "gelu'({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn every_code_path_gives_the_same_bits() {
        let x = grid();
        let mut plain = vec![0.0; x.len()];
        forward_loop(&x, &mut plain);
        let mut dispatched = vec![0.0; x.len()];
        forward_dispatch(&x, &mut dispatched);
        assert_eq!(
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            dispatched.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    fn tanh_exact(x: f64) -> f64 {
        0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x)).tanh())
    }

    #[test]
    fn tanh_gelu_is_within_2e_7_relative_of_the_f64_formula() {
        let x = grid();
        let mut y = vec![0.0; x.len()];
        GeluTanh.forward(&x, &mut y);
        for (&x, &y) in x.iter().zip(&y) {
            let want = tanh_exact(x as f64);
            assert!(
                (y as f64 - want).abs() <= 2e-7 * want.abs() + 1e-30,
                "gelu_tanh({x}) = {y}, want {want}"
            );
        }
    }

    #[test]
    fn tanh_gelu_derivative_matches_a_central_difference_of_the_f64_formula() {
        let x = grid();
        let mut g = vec![1.0f32; x.len()];
        GeluTanh.backward(&x, &mut g);
        for (&x, &g) in x.iter().zip(&g) {
            let xd = x as f64;
            let h = 1e-6 * xd.abs().max(1.0);
            let want = (tanh_exact(xd + h) - tanh_exact(xd - h)) / (2.0 * h);
            assert!(
                ((g as f64) - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "gelu_tanh'({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn tanh_gelu_code_paths_give_the_same_bits() {
        let x = grid();
        let (mut plain, mut dispatched) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        tanh_forward_loop(&x, &mut plain);
        tanh_forward_dispatch(&x, &mut dispatched);
        assert_eq!(
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            dispatched.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in -7080..=100 {
            let y = i as f64 / 10.0;
            let rel = (exp(y) - y.exp()).abs() / y.exp();
            assert!(rel < 1e-12, "exp({y}): {} vs {}", exp(y), y.exp());
        }
    }
}
