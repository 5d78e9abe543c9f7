//! ReLU, `max(x, 0)`, as a [`HostUnary`] operation: one pass over the buffer on rayon's threads
//! instead of burn-flex's comparison and masked fill on one thread, forward and backward.

use crate::op::HostUnary;

/// ReLU with burn's conventions: `x <= 0` gives `+0` (and no gradient), NaN stays NaN (and
/// passes its gradient), as `mask_fill(x, x <= 0, 0)` does.
#[derive(Clone, Copy, Debug)]
pub struct Relu;

impl HostUnary for Relu {
    fn forward(self, x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = if x <= 0.0 { 0.0 } else { x };
        }
    }

    fn backward(self, x: &[f32], grad: &mut [f32]) {
        // A select, not a conditional store: it vectorizes, and a branch on the sign of real
        // activations (about half negative, in no order) is mispredicted half the time.
        for (g, &x) in grad.iter_mut().zip(x) {
            *g = if x <= 0.0 { 0.0 } else { *g };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_nan_follow_burn() {
        let x = [-1.0, -0.0, 0.0, 2.5, f32::NAN];
        let mut y = [7.0; 5];
        Relu.forward(&x, &mut y);
        assert_eq!(y[..4], [0.0, 0.0, 0.0, 2.5]);
        assert!(y[1].is_sign_positive() && y[4].is_nan());
        let mut g = [1.0; 5];
        Relu.backward(&x, &mut g);
        assert_eq!(g, [0.0, 0.0, 0.0, 1.0, 1.0]);
    }
}
