//! Dropout whose masks are a pure function of the run's seed, the step and the call order.
//!
//! burn's backends seed their generators differently (flex seeds only the next random op), so a
//! plain dropout layer is not reproducible on every backend. Kiln reseeds the backend before each
//! mask with a value derived from (seed, step, call index); the training loop calls
//! [`reseed`] once per step.

use std::cell::Cell;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

// Per thread: each worker thread of a multi-device run has its own masks.
thread_local! {
    static STEP_SEED: Cell<u64> = const { Cell::new(0) };
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

/// Sets the seed of the dropout masks of the coming step.
pub fn reseed(run_seed: u64, step: u64) {
    STEP_SEED.set(mix(run_seed ^ mix(step)));
    CALLS.set(0);
}

/// splitmix64's finalizer: decorrelates nearby integers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Zeroes each element with probability `prob` and scales the rest by `1 / (1 - prob)`, while
/// training (autodiff enabled); the identity at evaluation.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    let device = x.device();
    if prob == 0.0 || !B::ad_enabled(&device) {
        return x;
    }
    let call = CALLS.replace(CALLS.get() + 1);
    B::seed(&device, mix(STEP_SEED.get() ^ call));
    let keep = 1.0 - prob;
    let mask = x.random_like(Distribution::Bernoulli(keep));
    x * mask / keep
}
