//! Symmetric weight quantization of a linear layer's `[d_in, d_out]` weight (burn's layout):
//!
//! - **int8, per output channel**: column `j` has the scale `max_i |w_ij| / 127` and the values
//!   `round(w_ij / scale_j)` in `-127..=127` (a zero column gets scale 1 and zeros).
//! - **int4, per block**: along the input dimension, blocks of `block` rows of one output
//!   column share the scale `max |w| / 7`, values in `-7..=7`, packed two per byte (the first of
//!   a pair in the low nibble, as ONNX's INT4), in `[d_out, d_in]` order so that a block is
//!   contiguous.
//!
//! Dequantization is `value * scale`; the error of each weight is at most half its scale.
//!
//! With calibration, an int4 block's scale may instead clip: among `scale * alpha` for `alpha`
//! in `CLIP_RATIOS`, the one whose weight error `e` adds the least output error
//! `e^T H e` is taken, `H` being the second moments `E[x x^T]` of the block's inputs measured on
//! training data. Clipping a few large weights buys a finer step for all the others; `H` counts
//! the correlated inputs over which clipping's systematic error adds up.

use anyhow::{ensure, Result};

/// An int8 matrix with one scale per output column.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Channels {
    /// Rows of the float weight (inputs): the values of each channel.
    pub d_in: usize,
    /// Columns of the float weight (outputs): the channels, one scale each.
    pub d_out: usize,
    /// `[d_in, d_out]`, row-major like the float weight.
    pub values: Vec<i8>,
    /// `[d_out]`.
    pub scales: Vec<f32>,
}

impl Int8Channels {
    /// Quantizes `w` (`[d_in, d_out]`, row-major).
    pub fn quantize(w: &[f32], d_in: usize, d_out: usize) -> Result<Int8Channels> {
        check_shape(w, d_in, d_out)?;
        let scales: Vec<f32> = (0..d_out)
            .map(|j| scale_of((0..d_in).map(|i| w[i * d_out + j]), 127.0))
            .collect();
        let values = w
            .iter()
            .enumerate()
            .map(|(k, &x)| quantize_one(x, scales[k % d_out], 127.0))
            .collect();
        Ok(Int8Channels {
            d_in,
            d_out,
            values,
            scales,
        })
    }

    /// The float weight the quantized one stands for, `[d_in, d_out]`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .iter()
            .enumerate()
            .map(|(k, &q)| f32::from(q) * self.scales[k % self.d_out])
            .collect()
    }
}

/// An int4 matrix with one scale per block of `block` input rows of each output column.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Blocks {
    /// Rows of the float weight (inputs): the values of each channel.
    pub d_in: usize,
    /// Columns of the float weight (outputs): the channels.
    pub d_out: usize,
    /// Rows per scale; a column's last block is shorter when `block` does not divide `d_in`.
    pub block: usize,
    /// `[d_out, d_in]` values in `-7..=7`, two per byte (low nibble first), padded to whole bytes.
    pub packed: Vec<u8>,
    /// `[d_out, ceil(d_in / block)]`.
    pub scales: Vec<f32>,
}

impl Int4Blocks {
    /// Quantizes `w` (`[d_in, d_out]`, row-major) in blocks of `block` inputs.
    pub fn quantize(w: &[f32], d_in: usize, d_out: usize, block: usize) -> Result<Int4Blocks> {
        Self::quantize_weighted(w, d_in, d_out, block, None)
    }

    /// Quantizes `w`, choosing each block's scale by the output error under `moments`, the
    /// `[d_in, d_in]` second moments of the inputs, when given.
    pub fn quantize_weighted(
        w: &[f32],
        d_in: usize,
        d_out: usize,
        block: usize,
        moments: Option<&[f32]>,
    ) -> Result<Int4Blocks> {
        check_shape(w, d_in, d_out)?;
        check_moments(moments, d_in)?;
        ensure!(block > 0, "the int4 block size must be at least 1");
        let blocks = d_in.div_ceil(block);
        let mut scales = Vec::with_capacity(d_out * blocks);
        let mut nibbles = Vec::with_capacity(d_out * d_in);
        for j in 0..d_out {
            let column: Vec<f32> = (0..d_in).map(|i| w[i * d_out + j]).collect();
            for (b, chunk) in column.chunks(block).enumerate() {
                let h = moments.map(|h| Moments {
                    h,
                    k: d_in,
                    offset: b * block,
                });
                let scale = choose_scale(chunk, h, 7.0);
                scales.push(scale);
                nibbles.extend(chunk.iter().map(|&x| quantize_one(x, scale, 7.0)));
            }
        }
        let packed = nibbles
            .chunks(2)
            .map(|p| (p[0] as u8 & 0x0f) | ((*p.get(1).unwrap_or(&0) as u8 & 0x0f) << 4))
            .collect();
        Ok(Int4Blocks {
            d_in,
            d_out,
            block,
            packed,
            scales,
        })
    }

    /// The value of input `i`, output `j` in `-7..=7`.
    pub fn value(&self, i: usize, j: usize) -> i8 {
        let k = j * self.d_in + i;
        let byte = self.packed[k / 2];
        let nibble = if k.is_multiple_of(2) {
            byte & 0x0f
        } else {
            byte >> 4
        };
        // Sign-extend the 4-bit two's complement value.
        ((nibble << 4) as i8) >> 4
    }

    /// The float weight the quantized one stands for, `[d_in, d_out]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.d_in.div_ceil(self.block);
        let mut w = vec![0.0; self.d_in * self.d_out];
        for i in 0..self.d_in {
            for j in 0..self.d_out {
                let scale = self.scales[j * blocks + i / self.block];
                w[i * self.d_out + j] = f32::from(self.value(i, j)) * scale;
            }
        }
        w
    }
}

fn check_shape(w: &[f32], d_in: usize, d_out: usize) -> Result<()> {
    ensure!(
        w.len() == d_in * d_out,
        "a [{d_in}, {d_out}] weight needs {} values, got {}",
        d_in * d_out,
        w.len()
    );
    ensure!(
        w.iter().all(|x| x.is_finite()),
        "the weight holds NaN or infinite values; it cannot be quantized"
    );
    Ok(())
}

fn check_moments(moments: Option<&[f32]>, d_in: usize) -> Result<()> {
    if let Some(h) = moments {
        ensure!(
            h.len() == d_in * d_in,
            "calibration gave {} second moments for {d_in} inputs ({} expected)",
            h.len(),
            d_in * d_in
        );
        ensure!(
            h.iter().all(|x| x.is_finite()),
            "calibration second moments must be finite"
        );
    }
    Ok(())
}

/// Fractions of the max-abs scale tried when calibrating, largest first.
pub const CLIP_RATIOS: [f32; 16] = [
    1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.7, 0.67, 0.64, 0.61, 0.58, 0.55,
];

/// The second moments of a block's inputs: rows and columns `offset..` of the `[k, k]` matrix.
#[derive(Clone, Copy)]
struct Moments<'a> {
    h: &'a [f32],
    k: usize,
    offset: usize,
}

/// The max-abs scale of `xs`, or with `moments` the clipped one with the least output error
/// `e^T H e` (ties keep the larger scale).
fn choose_scale(xs: &[f32], moments: Option<Moments>, max_q: f32) -> f32 {
    let full = scale_of(xs.iter().copied(), max_q);
    let Some(Moments { h, k, offset }) = moments else {
        return full;
    };
    let error = |scale: f32| -> f64 {
        let e: Vec<f64> = xs
            .iter()
            .map(|&x| f64::from(x - f32::from(quantize_one(x, scale, max_q)) * scale))
            .collect();
        e.iter()
            .enumerate()
            .map(|(i, ei)| {
                let row = &h[(offset + i) * k + offset..][..e.len()];
                ei * e
                    .iter()
                    .zip(row)
                    .map(|(ej, &hij)| ej * f64::from(hij))
                    .sum::<f64>()
            })
            .sum()
    };
    let mut best = (error(full), full);
    for ratio in &CLIP_RATIOS[1..] {
        let scale = full * ratio;
        let e = error(scale);
        if e < best.0 {
            best = (e, scale);
        }
    }
    best.1
}

/// The symmetric scale that maps the largest magnitude of `xs` to `max_q` (1 for all zeros).
fn scale_of(xs: impl Iterator<Item = f32>, max_q: f32) -> f32 {
    let m = xs.fold(0.0f32, |m, x| m.max(x.abs()));
    if m == 0.0 {
        1.0
    } else {
        m / max_q
    }
}

fn quantize_one(x: f32, scale: f32, max_q: f32) -> i8 {
    (x / scale).round().clamp(-max_q, max_q) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic weight with varied column magnitudes, one zero column and exact extremes.
    fn weight(d_in: usize, d_out: usize) -> Vec<f32> {
        (0..d_in * d_out)
            .map(|k| {
                let (i, j) = (k / d_out, k % d_out);
                if j == 2 {
                    0.0
                } else {
                    ((i * 7 + j * 13) % 17) as f32 / 17.0 * (j as f32 + 0.5) - 0.3
                }
            })
            .collect()
    }

    #[test]
    fn int8_error_is_at_most_half_a_step_per_channel() {
        let (d_in, d_out) = (37, 5);
        let w = weight(d_in, d_out);
        let q = Int8Channels::quantize(&w, d_in, d_out).unwrap();
        assert_eq!(q.scales.len(), d_out);
        assert_eq!(q.scales[2], 1.0, "a zero column gets scale 1");
        let back = q.dequantize();
        for (k, (&a, &b)) in w.iter().zip(&back).enumerate() {
            let scale = q.scales[k % d_out];
            assert!(
                (a - b).abs() <= scale / 2.0 + 1e-7,
                "weight {k}: {a} vs {b}"
            );
        }
        // The largest magnitude of each nonzero column maps to +-127 exactly.
        for j in [0, 1, 3, 4] {
            assert!((0..d_in).any(|i| q.values[i * d_out + j].unsigned_abs() == 127));
        }
    }

    #[test]
    fn int4_packs_two_values_per_byte_and_round_trips_within_half_a_step() {
        let (d_in, d_out, block) = (37, 5, 8);
        let w = weight(d_in, d_out);
        let q = Int4Blocks::quantize(&w, d_in, d_out, block).unwrap();
        assert_eq!(q.packed.len(), (d_in * d_out).div_ceil(2));
        assert_eq!(q.scales.len(), d_out * d_in.div_ceil(block));
        let back = q.dequantize();
        for i in 0..d_in {
            for j in 0..d_out {
                let v = q.value(i, j);
                assert!((-7..=7).contains(&v));
                let scale = q.scales[j * d_in.div_ceil(block) + i / block];
                let (a, b) = (w[i * d_out + j], back[i * d_out + j]);
                assert!(
                    (a - b).abs() <= scale / 2.0 + 1e-7,
                    "({i}, {j}): {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn negative_nibbles_sign_extend() {
        // One column of four inputs: -7, -1, 0, 7 after scaling by 1.
        let w = [-7.0, -1.0, 0.0, 7.0];
        let q = Int4Blocks::quantize(&w, 4, 1, 4).unwrap();
        assert_eq!(q.scales, vec![1.0]);
        // -7 = 0x9 and -1 = 0xf in 4-bit two's complement; 0 and 7 in the next byte.
        assert_eq!(q.packed, vec![0xf9, 0x70]);
        assert_eq!(
            (0..4).map(|i| q.value(i, 0)).collect::<Vec<_>>(),
            [-7, -1, 0, 7]
        );
    }

    #[test]
    fn calibrated_scales_clip_an_outlier_when_that_lowers_the_weighted_error() {
        // One outlier among small weights: max-abs int4 scale 1/7 rounds every small weight to
        // 0 or +-1 step; clipping the outlier gives them a finer step.
        let mut w: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) / 200.0).collect();
        w[5] = 1.0;
        let plain = Int4Blocks::quantize(&w, 32, 1, 32).unwrap();
        let identity: Vec<f32> = (0..32 * 32)
            .map(|i| if i % 33 == 0 { 1.0 } else { 0.0 })
            .collect();
        let calibrated = Int4Blocks::quantize_weighted(&w, 32, 1, 32, Some(&identity)).unwrap();
        let err = |q: &Int4Blocks| -> f32 {
            q.dequantize()
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b) * (a - b))
                .sum()
        };
        assert!(calibrated.scales[0] < plain.scales[0]);
        assert!(
            err(&calibrated) < err(&plain),
            "{} vs {}",
            err(&calibrated),
            err(&plain)
        );
        // When only the outlier's input matters, its exact representation wins: no clipping.
        let mut outlier_only = vec![0.0; 32 * 32];
        outlier_only[5 * 32 + 5] = 1.0;
        let q = Int4Blocks::quantize_weighted(&w, 32, 1, 32, Some(&outlier_only)).unwrap();
        assert_eq!(q.scales, plain.scales);
        // Inputs that always move together (all ones): the errors' sum is what counts, so a
        // clip that shrinks every large weight the same way is penalized more than with
        // independent inputs.
        let together = vec![1.0; 32 * 32];
        let q = Int4Blocks::quantize_weighted(&w, 32, 1, 32, Some(&together)).unwrap();
        let sum_err = |q: &Int4Blocks| -> f32 {
            q.dequantize()
                .iter()
                .zip(&w)
                .map(|(a, b)| a - b)
                .sum::<f32>()
                .abs()
        };
        assert!(sum_err(&q) <= sum_err(&calibrated) + 1e-6);
        let e = Int4Blocks::quantize_weighted(&w, 32, 1, 32, Some(&identity[..3])).unwrap_err();
        assert!(
            e.to_string().contains("3 second moments for 32 inputs"),
            "{e}"
        );
    }

    #[test]
    fn bad_weights_are_refused() {
        let e = Int8Channels::quantize(&[1.0, 2.0, 3.0], 2, 2).unwrap_err();
        assert!(
            e.to_string()
                .contains("[2, 2] weight needs 4 values, got 3"),
            "{e}"
        );
        let e = Int8Channels::quantize(&[1.0, f32::NAN], 1, 2).unwrap_err();
        assert!(e.to_string().contains("NaN"), "{e}");
        let e = Int4Blocks::quantize(&[1.0], 1, 1, 0).unwrap_err();
        assert!(e.to_string().contains("block size"), "{e}");
    }
}
