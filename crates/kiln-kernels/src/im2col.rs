//! Convolution patches (im2col) and their adjoint (col2im), differentiable under autodiff.
//!
//! [`im2col`] turns a batch of images `[n, c, h, w]` into one row per output position and
//! column per weight element: `[n * h_out * w_out, c * k * k]`, columns in the `(c, kh, kw)`
//! order of a convolution weight `[c_out, c, k, k]`, positions outside the image (zero padding)
//! as zeros. A stride-1 convolution is then one matrix product with the weight as
//! `[c_out, c * k * k]`, which runs as a single large, multi-threaded GEMM; its backward pass
//! is two more products and [`col2im`]'s scatter-add, also threaded (one image per task).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{host, on_cpu_autodiff, AutodiffNode};

/// The geometry of one stride-1 convolution with a square kernel and symmetric zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size.
    pub k: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Geometry {
    /// Output height and width, or `None` when the kernel does not fit.
    pub fn output(&self) -> Option<(usize, usize)> {
        let grown = |s: usize| (s + 2 * self.padding).checked_sub(self.k - 1);
        Some((grown(self.h)?, grown(self.w)?))
    }

    /// Columns of the patch matrix: `c * k * k`.
    pub fn cols(&self) -> usize {
        self.c * self.k * self.k
    }

    /// For each output position of image `image` (`x_img` its `[c, h, w]` pixels), its patch
    /// as a row of `rows`.
    fn unfold_image(&self, x_img: &[f32], rows: &mut [f32]) {
        let (ho, wo) = self.output().expect("checked by the caller");
        let (k, p, cols) = (self.k, self.padding as isize, self.cols());
        for oh in 0..ho {
            for ow in 0..wo {
                let row = &mut rows[(oh * wo + ow) * cols..][..cols];
                for c in 0..self.c {
                    let plane = &x_img[c * self.h * self.w..][..self.h * self.w];
                    for kh in 0..k {
                        let ih = oh as isize + kh as isize - p;
                        let out = &mut row[(c * k + kh) * k..][..k];
                        if ih < 0 || ih >= self.h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let line = &plane[ih as usize * self.w..][..self.w];
                        for (kw, o) in out.iter_mut().enumerate() {
                            let iw = ow as isize + kw as isize - p;
                            *o = if iw < 0 || iw >= self.w as isize {
                                0.0
                            } else {
                                line[iw as usize]
                            };
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Geometry::unfold_image`]: adds each patch element back onto its pixel.
    fn fold_image(&self, rows: &[f32], dx_img: &mut [f32]) {
        let (ho, wo) = self.output().expect("checked by the caller");
        let (k, p, cols) = (self.k, self.padding as isize, self.cols());
        dx_img.fill(0.0);
        for oh in 0..ho {
            for ow in 0..wo {
                let row = &rows[(oh * wo + ow) * cols..][..cols];
                for c in 0..self.c {
                    let plane = &mut dx_img[c * self.h * self.w..][..self.h * self.w];
                    for kh in 0..k {
                        let ih = oh as isize + kh as isize - p;
                        if ih < 0 || ih >= self.h as isize {
                            continue;
                        }
                        let line = &mut plane[ih as usize * self.w..][..self.w];
                        for (kw, &g) in row[(c * k + kh) * k..][..k].iter().enumerate() {
                            let iw = ow as isize + kw as isize - p;
                            if iw >= 0 && iw < self.w as isize {
                                line[iw as usize] += g;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Patches of every image: `x` is `[n, c, h, w]`, the result `[n * h_out * w_out, cols]`.
    pub fn unfold(&self, x: &[f32]) -> Vec<f32> {
        let (ho, wo) = self.output().expect("checked by the caller");
        let per_image = ho * wo * self.cols();
        let mut rows = vec![0.0f32; self.n * per_image];
        rows.par_chunks_mut(per_image.max(1))
            .zip(x.par_chunks((self.c * self.h * self.w).max(1)))
            .for_each(|(rows, x_img)| self.unfold_image(x_img, rows));
        rows
    }

    /// The gradient of the images from the gradient of their patches.
    pub fn fold(&self, rows: &[f32]) -> Vec<f32> {
        let (ho, wo) = self.output().expect("checked by the caller");
        let per_image = ho * wo * self.cols();
        let mut dx = vec![0.0f32; self.n * self.c * self.h * self.w];
        dx.par_chunks_mut((self.c * self.h * self.w).max(1))
            .zip(rows.par_chunks(per_image.max(1)))
            .for_each(|(dx_img, rows)| self.fold_image(rows, dx_img));
        dx
    }
}

/// Whether lowering a convolution to [`im2col`] and a matrix product is faster than backend
/// `B`'s own convolution, as measured on `kiln-bench --model cnn` (2 cores, AVX-512):
/// ndarray's convolution trains about 15x slower than the lowering (0.23 against 3.9 steps/s);
/// flex's is faster than it (5.9 against 4.4 steps/s: its tiled im2col stays in cache where the
/// full patch matrix of a 64-image batch does not).
pub fn lowering_pays<B: Backend>() -> bool {
    #[cfg(feature = "ndarray")]
    {
        use std::any::TypeId;
        let id = TypeId::of::<B>();
        id == TypeId::of::<burn::backend::NdArray>()
            || id == TypeId::of::<Autodiff<burn::backend::NdArray>>()
    }
    #[cfg(not(feature = "ndarray"))]
    false
}

/// The patch matrix of `x` (`[n, c, h, w]`) for a `kernel`-sized stride-1 convolution with
/// `padding`, on the CPU backends (differentiable under their autodiff); `None` on other
/// backends, or when the kernel does not fit the image.
pub fn im2col<B: Backend>(x: Tensor<B, 4>, kernel: usize, padding: usize) -> Option<Tensor<B, 2>> {
    let [n, c, h, w] = x.dims();
    let g = Geometry {
        n,
        c,
        h,
        w,
        k: kernel,
        padding,
    };
    g.output()?;
    if !crate::op::has_kernels::<B>() {
        return None;
    }
    let x = match on_cpu_autodiff(g, x) {
        Ok(patches) => return Some(patches),
        Err(x) => x,
    };
    Some(forward(g, x))
}

/// The patch matrix as a new tensor.
fn forward<B: Backend>(g: Geometry, x: Tensor<B, 4>) -> Tensor<B, 2> {
    let device = x.device();
    let x = host(x);
    let rows = g.unfold(x.as_slice());
    let (ho, wo) = g.output().expect("checked");
    Tensor::from_data(TensorData::new(rows, [g.n * ho * wo, g.cols()]), &device)
}

fn autodiff<IB: Backend>(g: Geometry, x: Tensor<Autodiff<IB>, 4>) -> Tensor<Autodiff<IB>, 2> {
    let x = x.into_primitive().tensor();
    let y = forward(
        g,
        Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(x.primitive)),
    )
    .into_primitive()
    .tensor();
    let out = match Im2col
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(g, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

impl AutodiffNode<4, 2> for Geometry {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, 4>) -> Tensor<Autodiff<IB>, 2> {
        autodiff::<IB>(self, x)
    }
}

/// The autodiff node of [`im2col`]; its state is the geometry (the backward pass needs no
/// tensor of the forward pass).
#[derive(Debug)]
struct Im2col;

impl<IB: Backend> Backward<IB, 1> for Im2col {
    type State = Geometry;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let rows = host(Tensor::<IB, 2>::from_primitive(TensorPrimitive::Float(
                grad,
            )));
            let device = rows.device();
            let dx = g.fold(rows.as_slice());
            Tensor::<IB, 4>::from_data(TensorData::new(dx, [g.n, g.c, g.h, g.w]), &device)
                .into_primitive()
                .tensor()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), r> == <x, fold(r)> for any x and r.
        for (c, h, w, k, padding) in [(1, 5, 4, 3, 0), (2, 4, 4, 3, 1), (3, 6, 5, 2, 1)] {
            let g = Geometry {
                n: 2,
                c,
                h,
                w,
                k,
                padding,
            };
            let x: Vec<f32> = (0..2 * c * h * w).map(|i| (i % 7) as f32 - 3.0).collect();
            let (ho, wo) = g.output().unwrap();
            let r: Vec<f32> = (0..2 * ho * wo * g.cols())
                .map(|i| (i % 5) as f32 - 2.0)
                .collect();
            let lhs: f32 = g.unfold(&x).iter().zip(&r).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(g.fold(&r)).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{g:?}");
        }
    }

    #[test]
    fn patches_follow_the_weight_layout() {
        // One 2-channel 3x3 image, 2x2 kernel, no padding: the first patch is
        // (c0: x00 x01 x10 x11, c1: the same of channel 1).
        let g = Geometry {
            n: 1,
            c: 2,
            h: 3,
            w: 3,
            k: 2,
            padding: 0,
        };
        let x: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let rows = g.unfold(&x);
        assert_eq!(&rows[..8], &[0., 1., 3., 4., 9., 10., 12., 13.]);
        assert_eq!(rows.len(), 4 * 8);
    }
}
