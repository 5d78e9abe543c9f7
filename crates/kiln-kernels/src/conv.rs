//! Stride-1 2-D convolution on the CPU backends, forward and backward, one image per task.
//!
//! burn-flex runs a convolution's backward pass as a convolution of transposed tensors and a
//! transposed convolution, whose layout copies and serial outer loops are most of a CNN's step;
//! burn-ndarray's convolution is about 15 times slower still. Here each image is lowered to its
//! patch matrix `P` (`[c * k * k, h_out * w_out]`, im2col) in a buffer of the thread's own that
//! stays in cache, and every product is one call of the `gemm` crate (the one burn-flex uses,
//! with its AVX-512 kernels where the CPU has them) on strided views, without transposing copies:
//!
//! - forward: `Y_n = W P_n + b`, written straight into the `[n, c_out, h_out, w_out]` output;
//! - backward: `dW = Σ_n dY_n P_nᵀ`, `db = Σ_n Σ_positions dY_n`, and, when the input needs a
//!   gradient, `dP_n = Wᵀ dY_n` added back onto the image's pixels (col2im).
//!
//! Images run in parallel on rayon's threads. The weight and bias gradients are summed per fixed
//! group of images and then over the groups in order, so the result is the same for any number
//! of threads (bit-exact resume does not depend on the machine's core count).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{has_kernels, host, matched, par_new, product, sum_parts, zeros};

/// Images per partial sum of the weight and bias gradients.
const GROUP: usize = 2;

/// A convolution's input, weight and bias, given back when [`conv2d`] does not apply.
pub type Inputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>);

/// `conv2d(x, weight, bias)` with stride 1, no dilation, one group and `padding` zeros on every
/// side, for `x` `[n, c, h, w]`, a square `weight` `[c_out, c, k, k]` and `bias` `[c_out]`, on
/// the CPU backends (differentiable under their autodiff). The inputs come back as `Err` on
/// other backends and for shapes this does not cover; the caller then takes burn's convolution.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    padding: usize,
) -> Result<Tensor<B, 4>, Inputs<B>> {
    let [n, c, h, w] = x.dims();
    let [c_out, c_w, kh, kw] = weight.dims();
    let conv = Conv {
        g: Geometry {
            n,
            c,
            h,
            w,
            k: kh,
            padding,
        },
        c_out,
    };
    let fits = kh == kw
        && c_w == c
        && bias.dims() == [c_out]
        && n * c * c_out * kh > 0
        && conv.g.output().is_some_and(|(ho, wo)| ho * wo > 0);
    if !fits || !has_kernels::<B>() {
        return Err((x, weight, bias));
    }
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match on_autodiff::<B, burn::backend::Flex>(conv, x, weight, bias) {
        Ok(y) => return Ok(y),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "ndarray")]
    let (x, weight, bias) = match on_autodiff::<B, burn::backend::NdArray>(conv, x, weight, bias) {
        Ok(y) => return Ok(y),
        Err(inputs) => inputs,
    };
    if B::ad_enabled(&x.device()) {
        return Err((x, weight, bias));
    }
    Ok(conv.forward_tensor(x, weight, bias))
}

/// The convolution as a node of `Autodiff<IB>`'s graph when `B` is that backend.
fn on_autodiff<B: Backend, IB: Backend>(
    conv: Conv,
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
) -> Result<Tensor<B, 4>, Inputs<B>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<IB>>() {
        return Err((x, weight, bias));
    }
    let y = autodiff::<IB>(conv, matched(x), matched(weight), matched(bias));
    Ok(matched(y))
}

fn autodiff<IB: Backend>(
    conv: Conv,
    x: Tensor<Autodiff<IB>, 4>,
    weight: Tensor<Autodiff<IB>, 4>,
    bias: Tensor<Autodiff<IB>, 1>,
) -> Tensor<Autodiff<IB>, 4> {
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let bias = bias.into_primitive().tensor();
    let inner = |p| Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(p));
    let y = conv
        .forward_tensor(
            inner(x.primitive.clone()),
            inner(weight.primitive.clone()),
            Tensor::<IB, 1>::from_primitive(TensorPrimitive::Float(bias.primitive)),
        )
        .into_primitive()
        .tensor();
    let out = match ConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((conv, x.primitive, weight.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The autodiff node; its state is the geometry, the input and the weight (the patches are
/// recomputed in the backward pass rather than kept).
#[derive(Debug)]
struct ConvBackward;

impl<IB: Backend> Backward<IB, 3> for ConvBackward {
    type State = (Conv, IB::FloatTensorPrimitive, IB::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<IB>(&ops.node);
        let (conv, x, weight) = ops.state;
        let dy = host(Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(dy)));
        let x = host(Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(x)));
        let weight = host(Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(
            weight,
        )));
        let device = dy.device();
        let (dx, dw, db) = conv.backward(
            x.as_slice(),
            weight.as_slice(),
            dy.as_slice(),
            node_x.is_some(),
        );
        let Geometry { n, c, h, w, k, .. } = conv.g;
        let tensor = |values: Vec<f32>, shape: Vec<usize>| {
            IB::float_from_data(TensorData::new(values, shape), &device)
        };
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<IB>(node.id, tensor(dx, vec![n, c, h, w]));
        }
        if let Some(node) = node_w {
            grads.register::<IB>(node.id, tensor(dw, vec![conv.c_out, c, k, k]));
        }
        if let Some(node) = node_b {
            grads.register::<IB>(node.id, tensor(db, vec![conv.c_out]));
        }
    }
}

/// One convolution: the geometry of its input and its output channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conv {
    g: Geometry,
    c_out: usize,
}

impl Conv {
    /// The output as a tensor of the CPU backend `B`.
    fn forward_tensor<B: Backend>(
        self,
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
    ) -> Tensor<B, 4> {
        let device = x.device();
        let (x, weight, bias) = (host(x), host(weight), host(bias));
        let y = self.forward(x.as_slice(), weight.as_slice(), bias.as_slice());
        let (ho, wo) = self.g.output().expect("checked by conv2d");
        Tensor::from_data(TensorData::new(y, [self.g.n, self.c_out, ho, wo]), &device)
    }

    /// `[n, c_out, h_out, w_out]` outputs of `x` `[n, c, h, w]`.
    fn forward(&self, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let g = &self.g;
        let (ho, wo) = g.output().expect("checked by conv2d");
        let (pos, cols, c_out) = (ho * wo, g.cols(), self.c_out);
        let image = g.c * g.h * g.w;
        par_new(
            g.n * c_out * pos,
            c_out * pos,
            || vec![0.0f32; pos * cols],
            |patches, i, y_img| {
                g.unfold_image(&x[i * image..][..image], patches);
                for (row, &b) in y_img.chunks_mut(pos).zip(bias) {
                    row.fill(b);
                }
                // Y_n [c_out, pos] += W [c_out, cols] · P_n [cols, pos].
                // SAFETY: every operand covers the extents and strides given.
                unsafe {
                    product(
                        (c_out, pos, cols),
                        (y_img.as_mut_ptr(), pos, 1),
                        (weight.as_ptr(), cols, 1),
                        (patches.as_ptr(), pos, 1),
                        1.0,
                        true,
                    )
                }
            },
        )
    }

    /// The gradients of the input (when `need_dx`), the weight and the bias from `dy`, the
    /// gradient of the output.
    fn backward(
        &self,
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
        need_dx: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
        let g = &self.g;
        let (ho, wo) = g.output().expect("checked by conv2d");
        let (pos, cols, c_out) = (ho * wo, g.cols(), self.c_out);
        let image = g.c * g.h * g.w;
        let groups = g.n.div_ceil(GROUP);
        let mut dw_parts = zeros(groups * c_out * cols);
        let mut db_parts = zeros(groups * c_out);
        let mut dx = zeros(if need_dx { g.n * image } else { 0 });
        let dx_parts: Vec<&mut [f32]> = if need_dx {
            dx.chunks_mut(GROUP * image).collect()
        } else {
            (0..groups).map(|_| <&mut [f32]>::default()).collect()
        };
        dw_parts
            .par_chunks_mut(c_out * cols)
            .zip(db_parts.par_chunks_mut(c_out))
            .zip(dx_parts)
            .enumerate()
            .for_each(|(group, ((dw, db), dx))| {
                let mut patches = vec![0.0f32; pos * cols];
                let mut d_patches = vec![0.0f32; if need_dx { pos * cols } else { 0 }];
                let first = group * GROUP;
                for i in first..(first + GROUP).min(g.n) {
                    let x_img = &x[i * image..][..image];
                    let dy_img = &dy[i * c_out * pos..][..c_out * pos];
                    g.unfold_image(x_img, &mut patches);
                    // dW [c_out, cols] += dY_n [c_out, pos] · P_nᵀ [pos, cols].
                    // SAFETY: every operand covers the extents and strides given.
                    unsafe {
                        product(
                            (c_out, cols, pos),
                            (dw.as_mut_ptr(), cols, 1),
                            (dy_img.as_ptr(), pos, 1),
                            (patches.as_ptr(), 1, pos),
                            1.0,
                            i > first,
                        )
                    }
                    for (b, row) in db.iter_mut().zip(dy_img.chunks(pos)) {
                        *b += row.iter().sum::<f32>();
                    }
                    if need_dx {
                        // dP_n [cols, pos] = Wᵀ [cols, c_out] · dY_n [c_out, pos].
                        // SAFETY: every operand covers the extents and strides given.
                        unsafe {
                            product(
                                (cols, pos, c_out),
                                (d_patches.as_mut_ptr(), pos, 1),
                                (weight.as_ptr(), 1, cols),
                                (dy_img.as_ptr(), pos, 1),
                                1.0,
                                false,
                            )
                        }
                        g.fold_image(&d_patches, &mut dx[(i - first) * image..][..image]);
                    }
                }
            });
        let dw = sum_parts(&dw_parts, c_out * cols);
        let db = sum_parts(&db_parts, c_out);
        (need_dx.then_some(dx), dw, db)
    }
}

/// The geometry of one stride-1 convolution with a square kernel and symmetric zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    /// Images.
    n: usize,
    /// Input channels.
    c: usize,
    /// Input height.
    h: usize,
    /// Input width.
    w: usize,
    /// Kernel size.
    k: usize,
    /// Zero padding on every side.
    padding: usize,
}

impl Geometry {
    /// Output height and width, or `None` when the kernel does not fit.
    fn output(&self) -> Option<(usize, usize)> {
        let grown = |s: usize| (s + 2 * self.padding).checked_sub(self.k - 1);
        Some((grown(self.h)?, grown(self.w)?))
    }

    /// Rows of the patch matrix: `c * k * k`, in the `(c, kh, kw)` order of a weight
    /// `[c_out, c, k, k]`.
    fn cols(&self) -> usize {
        self.c * self.k * self.k
    }

    /// The output columns `ow` whose input column `ow + kw - padding` is inside the image.
    fn inside(&self, kw: usize, wo: usize) -> std::ops::Range<usize> {
        let lo = self.padding.saturating_sub(kw).min(wo);
        let hi = (self.w + self.padding).saturating_sub(kw).min(wo).max(lo);
        lo..hi
    }

    /// The patch matrix `[c * k * k, h_out * w_out]` of one image (`x_img` its `[c, h, w]`
    /// pixels): row `(c, kh, kw)` holds, for every output position, the pixel under that kernel
    /// element, zero in the padding. Each row is the image plane shifted, so it is copied a line
    /// segment at a time.
    fn unfold_image(&self, x_img: &[f32], patches: &mut [f32]) {
        let (ho, wo) = self.output().expect("checked by the caller");
        let (h, w, k, p) = (self.h, self.w, self.k, self.padding);
        for (c, plane) in x_img.chunks(h * w).enumerate() {
            for kh in 0..k {
                for kw in 0..k {
                    let row = &mut patches[((c * k + kh) * k + kw) * ho * wo..][..ho * wo];
                    let inside = self.inside(kw, wo);
                    for (oh, seg) in row.chunks_mut(wo).enumerate() {
                        let ih = (oh + kh).wrapping_sub(p);
                        if ih >= h || inside.is_empty() {
                            seg.fill(0.0);
                            continue;
                        }
                        let start = inside.start + kw - p;
                        seg[..inside.start].fill(0.0);
                        seg[inside.clone()]
                            .copy_from_slice(&plane[ih * w + start..][..inside.len()]);
                        seg[inside.end..].fill(0.0);
                    }
                }
            }
        }
    }

    /// The adjoint of [`Geometry::unfold_image`]: adds each patch element back onto its pixel.
    fn fold_image(&self, patches: &[f32], dx_img: &mut [f32]) {
        let (ho, wo) = self.output().expect("checked by the caller");
        let (h, w, k, p) = (self.h, self.w, self.k, self.padding);
        dx_img.fill(0.0);
        for (c, plane) in dx_img.chunks_mut(h * w).enumerate() {
            for kh in 0..k {
                for kw in 0..k {
                    let row = &patches[((c * k + kh) * k + kw) * ho * wo..][..ho * wo];
                    let inside = self.inside(kw, wo);
                    if inside.is_empty() {
                        continue;
                    }
                    let start = inside.start + kw - p;
                    for (oh, seg) in row.chunks(wo).enumerate() {
                        let ih = (oh + kh).wrapping_sub(p);
                        if ih >= h {
                            continue;
                        }
                        let line = &mut plane[ih * w + start..][..inside.len()];
                        for (d, &g) in line.iter_mut().zip(&seg[inside.clone()]) {
                            *d += g;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), r> == <x, fold(r)> for any x and r, also where the padding is wider than
        // the kernel reaches.
        for (c, h, w, k, padding) in [
            (1, 5, 4, 3, 0),
            (2, 4, 4, 3, 1),
            (3, 6, 5, 2, 1),
            (1, 3, 2, 2, 3),
        ] {
            let g = Geometry {
                n: 1,
                c,
                h,
                w,
                k,
                padding,
            };
            let x: Vec<f32> = (0..c * h * w).map(|i| (i % 7) as f32 - 3.0).collect();
            let (ho, wo) = g.output().unwrap();
            let r: Vec<f32> = (0..ho * wo * g.cols())
                .map(|i| (i % 5) as f32 - 2.0)
                .collect();
            let mut patches = vec![f32::NAN; r.len()];
            g.unfold_image(&x, &mut patches);
            let mut dx = vec![f32::NAN; x.len()];
            g.fold_image(&r, &mut dx);
            let lhs: f32 = patches.iter().zip(&r).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{g:?}");
        }
    }

    #[test]
    fn patches_follow_the_weight_layout() {
        // One 2-channel 3x3 image, 2x2 kernel: row (c0, kh0, kw0) is pixels 0 1 3 4 of the four
        // output positions, row (c0, kh0, kw1) pixels 1 2 4 5; with padding 1 the first row of
        // the 4x4 output starts with padding zeros.
        let x: Vec<f32> = (1..=18).map(|i| i as f32).collect();
        let mut g = Geometry {
            n: 1,
            c: 2,
            h: 3,
            w: 3,
            k: 2,
            padding: 0,
        };
        let mut patches = vec![f32::NAN; 8 * 4];
        g.unfold_image(&x, &mut patches);
        assert_eq!(&patches[..8], &[1., 2., 4., 5., 2., 3., 5., 6.]);
        assert_eq!(&patches[4 * 4..4 * 4 + 4], &[10., 11., 13., 14.]);
        g.padding = 1;
        let mut patches = vec![f32::NAN; 8 * 16];
        g.unfold_image(&x, &mut patches);
        assert_eq!(&patches[..8], &[0., 0., 0., 0., 0., 1., 2., 3.]);
    }
}
