//! A residual network for images (He et al., "Deep Residual Learning for Image Recognition",
//! 2016) in its CIFAR form: a 3x3 convolution stem, stages of basic blocks, global average
//! pooling and one linear classifier.
//!
//! A basic block is two 3x3 convolutions, each followed by batch norm, the first by a ReLU; the
//! block's input is added to their output (through a 1x1 convolution and batch norm where the
//! width or the size changes) and a ReLU follows the sum. The first block of every stage after
//! the first halves the feature map: its first convolution and its shortcut have stride 2.
//!
//! A stride-2 convolution is computed as the stride-1 convolution (Kiln's fast kernel on the
//! CPU backends) of which every other row and column is kept: the same numbers, since output
//! `(i, j)` of a stride-2 convolution is output `(2i, 2j)` of the stride-1 one.

use anyhow::{bail, Result};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kiln_core::config::Precision;
use serde::{Deserialize, Serialize};

use crate::cnn::{conv_patches, BATCH_NORM_EPSILON};
use crate::init::HostInit;
use crate::mlp::{Activation, Mlp};
use crate::norm::batch_norm;
use crate::plan::{mlp_steps, Step};
use crate::precision::conv2d;
use crate::Observer;

/// `[model]` with `kind = "resnet"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// Basic blocks per stage (default `[2, 2, 2]`: a ResNet-14).
    #[serde(default = "default_stages")]
    pub stages: Vec<usize>,
    /// Channels of each stage (default `[16, 32, 64]`); the stem has the first stage's.
    #[serde(default = "default_widths")]
    pub widths: Vec<usize>,
    /// Dropout before the classifier, while training.
    #[serde(default)]
    pub dropout: f64,
}

fn default_stages() -> Vec<usize> {
    vec![2, 2, 2]
}

fn default_widths() -> Vec<usize> {
    vec![16, 32, 64]
}

impl ResNetConfig {
    /// The keys of the section (besides `kind`).
    pub const KEYS: &'static [&'static str] = &["stages", "widths", "dropout"];

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() || self.stages.contains(&0) {
            bail!("model.stages: a ResNet needs at least one stage of at least one block");
        }
        if self.widths.len() != self.stages.len() {
            bail!(
                "model.widths: one width per stage ({} stages, {} widths)",
                self.stages.len(),
                self.widths.len()
            );
        }
        if self.widths.contains(&0) {
            bail!("model.widths: widths must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("model.dropout: must be in [0, 1)");
        }
        Ok(())
    }

    /// The network's inference steps, for exporters: the stem, each block `blocks.{i}` as a
    /// residual step followed by a ReLU, global average pooling and the classifier
    /// (`head.layers.0`).
    pub fn plan(&self) -> Vec<Step> {
        let conv = |name: &str, padding, stride| Step::Conv2d {
            weight: format!("{name}.weight"),
            bias: format!("{name}.bias"),
            padding,
            stride,
        };
        let norm = |prefix: String| Step::BatchNorm {
            prefix,
            epsilon: BATCH_NORM_EPSILON,
        };
        let relu = Step::Activation(Activation::Relu);
        let mut steps = vec![conv("stem", 1, 1), norm("stem_norm".into()), relu.clone()];
        for (i, (c_in, c_out, stride)) in self.blocks().into_iter().enumerate() {
            let b = format!("blocks.{i}");
            let body = vec![
                conv(&format!("{b}.conv1"), 1, stride),
                norm(format!("{b}.norm1")),
                relu.clone(),
                conv(&format!("{b}.conv2"), 1, 1),
                norm(format!("{b}.norm2")),
            ];
            let shortcut = if stride != 1 || c_in != c_out {
                vec![
                    conv(&format!("{b}.shortcut.conv"), 0, stride),
                    norm(format!("{b}.shortcut.norm")),
                ]
            } else {
                Vec::new()
            };
            steps.push(Step::Residual { body, shortcut });
            steps.push(relu.clone());
        }
        steps.push(Step::GlobalAvgPool);
        steps.extend(mlp_steps("head.", 1, Activation::Relu));
        steps
    }

    /// The blocks in order: input width, output width and stride.
    fn blocks(&self) -> Vec<(usize, usize, usize)> {
        let mut blocks = Vec::new();
        let mut c_in = self.widths[0];
        for (s, (&n, &c_out)) in self.stages.iter().zip(&self.widths).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push((c_in, c_out, stride));
                c_in = c_out;
            }
        }
        blocks
    }

    /// Parameters for images of `c` channels and `classes` classes: convolution kernels and
    /// biases, batch norms' four vectors (burn counts the running statistics too), the
    /// classifier.
    pub fn param_count(&self, c: usize, classes: usize) -> u128 {
        let conv = |c_in: usize, c_out: usize, k: usize| (c_in * c_out * k * k + c_out) as u128;
        let norm = |c: usize| 4 * c as u128;
        let w0 = self.widths[0];
        let mut params = conv(c, w0, 3) + norm(w0);
        for (c_in, c_out, stride) in self.blocks() {
            params += conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + 2 * norm(c_out);
            if stride != 1 || c_in != c_out {
                params += conv(c_in, c_out, 1) + norm(c_out);
            }
        }
        let last = *self.widths.last().unwrap_or(&w0);
        params + (last * classes + classes) as u128
    }
}

/// A 1x1 convolution and batch norm: the shortcut of a block that changes width or size.
#[derive(Module, Debug)]
pub struct Shortcut<B: Backend> {
    /// The 1x1 convolution.
    pub conv: Conv2d<B>,
    /// Its batch norm.
    pub norm: BatchNorm<B>,
}

/// Two 3x3 convolutions with batch norm, and the shortcut around them.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    /// The first convolution (stride 2 in a block that halves the size).
    pub conv1: Conv2d<B>,
    /// Batch norm after the first convolution.
    pub norm1: BatchNorm<B>,
    /// The second convolution.
    pub conv2: Conv2d<B>,
    /// Batch norm after the second convolution.
    pub norm2: BatchNorm<B>,
    /// The projection of the input, where the block changes width or size (else the input).
    pub shortcut: Option<Shortcut<B>>,
    /// 1, or 2 to halve the feature map.
    #[module(skip)]
    pub stride: usize,
}

/// A residual network: stem, blocks, global average pooling, classifier.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// The 3x3 stem convolution.
    pub stem: Conv2d<B>,
    /// Batch norm after the stem.
    pub stem_norm: BatchNorm<B>,
    /// The basic blocks of all stages, in order.
    pub blocks: Vec<BasicBlock<B>>,
    /// The classifier of the pooled features (a linear layer; dropout before it).
    pub head: Mlp<B>,
    /// Input `[channels, height, width]`.
    #[module(skip)]
    pub input_shape: [usize; 3],
    /// The precision the convolutions compute in.
    #[module(skip)]
    pub precision: Precision,
}

fn norm<B: Backend>(c: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(c)
        .with_epsilon(BATCH_NORM_EPSILON)
        .init(device)
}

impl<B: Backend> ResNet<B> {
    /// Builds the network for images of `input_shape` and `outputs` outputs.
    pub fn new(
        spec: &ResNetConfig,
        input_shape: [usize; 3],
        outputs: usize,
        init: &mut HostInit,
        device: &B::Device,
    ) -> Result<Self> {
        let [c, h, w] = input_shape;
        let halvings = spec.stages.len() - 1;
        if h >> halvings == 0 || w >> halvings == 0 {
            bail!(
                "model.stages: {} stages halve a {h}x{w} image {halvings} times, to nothing; use \
                 fewer stages or larger images (data.image_size)",
                spec.stages.len()
            );
        }
        let stem = init.conv2d(c, spec.widths[0], 3, 1, device);
        let stem_norm = norm(spec.widths[0], device);
        let blocks = (spec.blocks().into_iter())
            .map(|(c_in, c_out, stride)| BasicBlock {
                conv1: init.conv2d(c_in, c_out, 3, 1, device),
                norm1: norm(c_out, device),
                conv2: init.conv2d(c_out, c_out, 3, 1, device),
                norm2: norm(c_out, device),
                shortcut: (stride != 1 || c_in != c_out).then(|| Shortcut {
                    conv: init.conv2d(c_in, c_out, 1, 0, device),
                    norm: norm(c_out, device),
                }),
                stride,
            })
            .collect();
        let last = *spec.widths.last().unwrap_or(&spec.widths[0]);
        let head = Mlp::new(
            last,
            &[],
            outputs,
            Activation::Relu,
            spec.dropout,
            init,
            device,
        );
        Ok(Self {
            stem,
            stem_norm,
            blocks,
            head,
            input_shape,
            precision: Precision::F32,
        })
    }

    /// Runs the convolutions and the classifier in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self.head = self.head.with_precision(precision);
        self
    }

    /// `[batch, channels*height*width] -> [batch, outputs]`, showing every convolution's patches
    /// and the classifier's input to `observer`.
    pub fn forward_observed(
        &self,
        x: Tensor<B, 2>,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let [c, h, w] = self.input_shape;
        let batch = x.dims()[0];
        let p = self.precision;
        let x = x.reshape([batch, c, h, w]);
        observer.observe(&|| "stem.weight".into(), &|| {
            conv_patches(&self.stem, x.clone(), 1, 1)
        });
        let mut x = relu(batch_norm(&self.stem_norm, conv2d(&self.stem, x, 1, p)));
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, p, &format!("blocks.{i}."), observer);
        }
        let [n, c, _, _] = x.dims();
        let pooled = x.mean_dim(3).mean_dim(2).reshape([n, c]);
        self.head.forward_observed(pooled, "head.", observer)
    }
}

impl<B: Backend> BasicBlock<B> {
    /// The block's output, showing each convolution's input (`{prefix}conv1.weight`, ...) to
    /// `observer`.
    fn forward(
        &self,
        x: Tensor<B, 4>,
        p: Precision,
        prefix: &str,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 4> {
        observer.observe(&|| format!("{prefix}conv1.weight"), &|| {
            conv_patches(&self.conv1, x.clone(), 1, self.stride)
        });
        let mut y = conv2d(&self.conv1, x.clone(), 1, p);
        if self.stride == 2 {
            y = every_other(y);
        }
        let y = relu(batch_norm(&self.norm1, y));
        observer.observe(&|| format!("{prefix}conv2.weight"), &|| {
            conv_patches(&self.conv2, y.clone(), 1, 1)
        });
        let y = batch_norm(&self.norm2, conv2d(&self.conv2, y, 1, p));
        let shortcut = match &self.shortcut {
            Some(s) => {
                let x = if self.stride == 2 { every_other(x) } else { x };
                observer.observe(&|| format!("{prefix}shortcut.conv.weight"), &|| {
                    conv_patches(&s.conv, x.clone(), 0, 1)
                });
                batch_norm(&s.norm, conv2d(&s.conv, x, 0, p))
            }
            None => x,
        };
        relu(y + shortcut)
    }
}

fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    kiln_kernels::relu(x)
}

/// Rows and columns `0, 2, 4, ...` of `[n, c, h, w]`: `[n, c, ceil(h / 2), ceil(w / 2)]`.
pub fn every_other<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.pad((0, 2 * w2 - w, 0, 2 * h2 - h), 0.0)
    } else {
        x
    };
    x.reshape([n, c, h2, 2, w2, 2])
        .narrow(3, 0, 1)
        .narrow(5, 0, 1)
        .reshape([n, c, h2, w2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

    #[test]
    fn every_other_row_and_column_of_a_stride_1_convolution_is_the_stride_2_one() {
        let device = Default::default();
        for size in [7, 8] {
            let x = Tensor::<B, 4>::random([2, 3, size, size], Distribution::Default, &device);
            let w = Tensor::<B, 4>::random([4, 3, 3, 3], Distribution::Default, &device);
            let conv = |stride| {
                let options = ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
                burn_conv2d(x.clone(), w.clone(), None, options)
            };
            let (strided, sub) = (conv(2), every_other(conv(1)));
            assert_eq!(strided.dims(), sub.dims());
            let diff = (strided - sub).abs().max().into_scalar();
            assert!(diff < 1e-5, "{size}x{size}: {diff}");
        }
        let x = Tensor::<B, 4>::from_data(
            TensorData::new((0..15).map(|v| v as f32).collect(), [1, 1, 3, 5]),
            &device,
        );
        let kept: Vec<f32> = every_other(x).into_data().to_vec().unwrap();
        assert_eq!(kept, [0.0, 2.0, 4.0, 10.0, 12.0, 14.0]);
    }

    #[test]
    fn the_network_halves_per_stage_and_counts_its_parameters() {
        let device = Default::default();
        let spec = ResNetConfig {
            stages: vec![1, 2, 1],
            widths: vec![4, 8, 8],
            dropout: 0.0,
        };
        spec.validate().unwrap();
        let net = ResNet::<B>::new(&spec, [3, 9, 9], 5, &mut HostInit::new(1), &device).unwrap();
        assert_eq!(net.num_params() as u128, spec.param_count(3, 5));
        // Shortcuts where the width or the size changes: blocks 1 (stride 2, 4 -> 8) and 3
        // (stride 2, same width).
        let shortcuts: Vec<bool> = net.blocks.iter().map(|b| b.shortcut.is_some()).collect();
        assert_eq!(shortcuts, [false, true, false, true]);
        let x = Tensor::<B, 2>::random([2, 3 * 81], Distribution::Default, &device);
        assert_eq!(net.forward_observed(x, &mut ()).dims(), [2, 5]);

        let e = ResNet::<B>::new(&spec, [3, 2, 2], 5, &mut HostInit::new(1), &device);
        assert!(e.unwrap_err().to_string().contains("to nothing"));
        let bad = ResNetConfig {
            widths: vec![4, 8],
            ..spec
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("one width per stage"));
    }
}
