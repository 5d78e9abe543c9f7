//! Dynamic loss scaling for f16 mixed precision, as PyTorch's `GradScaler`.
//!
//! f16 represents nothing below about 6e-8, so small gradients flowing back through f16 matrix
//! products would vanish. The loss is multiplied by `scale` before the backward pass and the
//! gradients divided by it before the update. When a step's gradients overflow (inf or NaN) the
//! update is skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a row it doubles.
//! bf16 has f32's exponent range and needs none of this.

use serde::{Deserialize, Serialize};

/// The scaler's whole state (saved in checkpoints, so a resumed run continues with it).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LossScale {
    /// The factor the loss is multiplied by before the backward pass.
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
    /// Steps skipped because their gradients overflowed, over the whole run.
    pub skipped_steps: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: Self::INIT,
            good_steps: 0,
            skipped_steps: 0,
        }
    }
}

impl LossScale {
    /// PyTorch's defaults.
    pub const INIT: f64 = 65536.0;
    /// Good steps in a row after which the scale doubles.
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// Records whether this step's gradients were finite; returns whether to apply the update.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            self.skipped_steps += 1;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_skips_a_long_good_run_doubles() {
        let mut s = LossScale::default();
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped_steps), (32768.0, 1));
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // An overflow restarts the count.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps, s.skipped_steps), (32768.0, 0, 2));
    }
}
