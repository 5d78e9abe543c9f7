//! Convolutional classifier: `[Conv2d -> (BatchNorm) -> activation] (-> pool)` blocks, then an MLP
//! head on the flattened features.

use anyhow::{bail, Result};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::Tensor;
use kiln_core::config::Precision;
use serde::{Deserialize, Serialize};

use crate::init::HostInit;
use crate::mlp::{activate, check_head, relu, Activation, Mlp};
use crate::norm::batch_norm;
use crate::plan::{mlp_steps, Step};
use crate::precision::conv2d;
use crate::Observer;

/// Pooling after a convolution (`model.pooling`): 2x2 with stride 2, or none.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The maximum of each 2x2 window.
    Max,
    /// The mean of each 2x2 window.
    Avg,
    /// No pooling.
    None,
}

/// The epsilon of the batch norms (burn's and PyTorch's default).
pub const BATCH_NORM_EPSILON: f64 = 1e-5;

/// `[model]` with `kind = "cnn"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CnnConfig {
    /// Widths of the classifier head's hidden layers.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// The activation after each convolution and hidden layer (default ReLU).
    #[serde(default = "relu")]
    pub activation: Activation,
    /// Dropout in the head, while training.
    #[serde(default)]
    pub dropout: f64,
    /// Output channels of each convolution.
    #[serde(default)]
    pub channels: Vec<usize>,
    /// Height and width of every convolution's kernel (default 3).
    #[serde(default = "three")]
    pub kernel_size: usize,
    /// Zero padding of each convolution (`kernel_size / 2` keeps the size).
    #[serde(default)]
    pub padding: usize,
    /// Pooling after each convolution (`pool_every = 1`) or after every n-th.
    #[serde(default = "max")]
    pub pooling: Pooling,
    /// Pool after every n-th convolution (default 1, after each).
    #[serde(default = "one")]
    pub pool_every: usize,
    /// Batch normalization after each convolution.
    #[serde(default)]
    pub batch_norm: bool,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn max() -> Pooling {
    Pooling::Max
}

impl CnnConfig {
    /// The keys of the section (besides `kind`).
    pub const KEYS: &'static [&'static str] = &[
        "hidden",
        "activation",
        "dropout",
        "channels",
        "kernel_size",
        "padding",
        "pooling",
        "pool_every",
        "batch_norm",
    ];

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<()> {
        check_head(&self.hidden, self.dropout)?;
        if self.channels.is_empty() {
            bail!("model.channels: a CNN needs at least one convolution");
        }
        if self.channels.contains(&0) {
            bail!("model.channels: channel counts must be at least 1");
        }
        if self.kernel_size == 0 {
            bail!("model.kernel_size: must be at least 1");
        }
        if self.pool_every == 0 {
            bail!("model.pool_every: must be at least 1");
        }
        Ok(())
    }

    /// Parameters of the network for images of `[c, h, w]` and `classes` classes: each
    /// convolution's kernel and bias, batch norm's scale, shift and running mean and variance
    /// (burn counts those as parameters too), and the head. Feature maps
    /// that a convolution or pooling cannot shrink further count as empty ([`Cnn::new`] refuses
    /// them with its own error).
    pub fn param_count(&self, [c, h, w]: [usize; 3], classes: usize) -> u128 {
        let (mut c, mut h, mut w) = (c as u128, h, w);
        let k = self.kernel_size as u128;
        let mut params = 0u128;
        for (i, &c_out) in self.channels.iter().enumerate() {
            let c_out = c_out as u128;
            params += c * c_out * k * k + c_out;
            if self.batch_norm {
                params += 4 * c_out;
            }
            let grown = |s: usize| (s + 2 * self.padding).saturating_sub(self.kernel_size - 1);
            (c, h, w) = (c_out, grown(h), grown(w));
            if self.pooling != Pooling::None && (i + 1) % self.pool_every.max(1) == 0 {
                (h, w) = (h / 2, w / 2);
            }
        }
        let flat = (c * h as u128 * w as u128).min(usize::MAX as u128) as usize;
        params + crate::mlp::head_params(flat, &self.hidden, classes)
    }

    /// The network's inference steps, for exporters: per block `blocks.{i}` a convolution,
    /// batch norm if any, the activation and the pooling of every `pool_every`-th block; then
    /// the flattened features through the head (`head.layers.{i}`).
    pub fn plan(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 0..self.channels.len() {
            steps.push(Step::Conv2d {
                weight: format!("blocks.{i}.conv.weight"),
                bias: format!("blocks.{i}.conv.bias"),
                padding: self.padding,
                stride: 1,
            });
            if self.batch_norm {
                steps.push(Step::BatchNorm {
                    prefix: format!("blocks.{i}.norm"),
                    epsilon: BATCH_NORM_EPSILON,
                });
            }
            steps.push(Step::Activation(self.activation));
            if (i + 1) % self.pool_every == 0 {
                match self.pooling {
                    Pooling::Max => steps.push(Step::MaxPool2),
                    Pooling::Avg => steps.push(Step::AvgPool2),
                    Pooling::None => {}
                }
            }
        }
        steps.push(Step::Flatten);
        steps.extend(mlp_steps("head.", self.hidden.len() + 1, self.activation));
        steps
    }
}

/// One convolution with what follows it: batch norm, the activation and pooling.
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    /// The convolution, stride 1.
    pub conv: Conv2d<B>,
    /// Batch normalization over channels, when `model.batch_norm`.
    pub norm: Option<BatchNorm<B>>,
    /// 2x2 max pooling, when this block pools by maximum.
    pub max_pool: Option<MaxPool2d>,
    /// 2x2 average pooling, when this block pools by mean.
    pub avg_pool: Option<AvgPool2d>,
}

/// A convolutional classifier: convolution blocks, then the flattened feature map through an
/// MLP head.
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    /// The convolution blocks, in order.
    pub blocks: Vec<ConvBlock<B>>,
    /// The classifier of the flattened features.
    pub head: Mlp<B>,
    /// Input `[channels, height, width]`.
    #[module(skip)]
    pub input_shape: [usize; 3],
    /// Applied after each convolution (after batch norm).
    #[module(skip)]
    pub activation: Activation,
    /// Zero padding of every convolution.
    #[module(skip)]
    pub padding: usize,
    /// The precision the layers compute in.
    #[module(skip)]
    pub precision: Precision,
}

impl<B: Backend> Cnn<B> {
    /// Builds the network for images of `input_shape` (`[channels, height, width]`), checking that
    /// every convolution and pooling leaves a non-empty feature map.
    pub fn new(
        spec: &CnnConfig,
        input_shape: [usize; 3],
        num_classes: usize,
        init: &mut HostInit,
        device: &B::Device,
    ) -> Result<Self> {
        let [mut c, mut h, mut w] = input_shape;
        let mut blocks = Vec::new();
        for (i, &c_out) in spec.channels.iter().enumerate() {
            let grown = |s: usize| (s + 2 * spec.padding).checked_sub(spec.kernel_size - 1);
            let (Some(h2), Some(w2)) = (grown(h), grown(w)) else {
                bail!(
                    "model.kernel_size: convolution {} gets a {h}x{w} feature map, smaller than its {k}x{k} kernel; use fewer convolutions, more model.padding or less pooling",
                    i + 1,
                    k = spec.kernel_size
                );
            };
            let conv = init.conv2d(c, c_out, spec.kernel_size, spec.padding, device);
            (c, h, w) = (c_out, h2, w2);
            let norm = spec.batch_norm.then(|| {
                BatchNormConfig::new(c_out)
                    .with_epsilon(BATCH_NORM_EPSILON)
                    .init(device)
            });
            let pool_here = spec.pooling != Pooling::None && (i + 1) % spec.pool_every == 0;
            if pool_here && (h < 2 || w < 2) {
                bail!("model.pooling: the feature map after convolution {} is {h}x{w}, too small to pool; pool less often (model.pool_every)", i + 1);
            }
            let (max_pool, avg_pool) = match (pool_here, spec.pooling) {
                (true, Pooling::Max) => (
                    Some(MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init()),
                    None,
                ),
                (true, Pooling::Avg) => (
                    None,
                    Some(AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init()),
                ),
                _ => (None, None),
            };
            if pool_here {
                (h, w) = (h / 2, w / 2);
            }
            blocks.push(ConvBlock {
                conv,
                norm,
                max_pool,
                avg_pool,
            });
        }
        let head = Mlp::new(
            c * h * w,
            &spec.hidden,
            num_classes,
            spec.activation,
            spec.dropout,
            init,
            device,
        );
        Ok(Self {
            blocks,
            head,
            input_shape,
            activation: spec.activation,
            padding: spec.padding,
            precision: Precision::F32,
        })
    }

    /// Runs the convolutions and the head's linear layers in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self.head = self.head.with_precision(precision);
        self
    }

    /// `[batch, channels*height*width] -> [batch, classes]` logits.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_observed(x, &mut ())
    }

    /// [`Cnn::forward`], showing each layer's input to `observer`.
    pub fn forward_observed(
        &self,
        x: Tensor<B, 2>,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let [c, h, w] = self.input_shape;
        let batch = x.dims()[0];
        let mut x: Tensor<B, 4> = x.reshape([batch, c, h, w]);
        for (i, block) in self.blocks.iter().enumerate() {
            observer.observe(&|| format!("blocks.{i}.conv.weight"), &|| {
                conv_patches(&block.conv, x.clone(), self.padding, 1)
            });
            x = conv2d(&block.conv, x, self.padding, self.precision);
            if let Some(norm) = &block.norm {
                x = batch_norm(norm, x);
            }
            x = activate(x, self.activation);
            if let Some(pool) = &block.max_pool {
                x = max_pool(pool, x);
            }
            if let Some(pool) = &block.avg_pool {
                x = pool.forward(x);
            }
        }
        self.head
            .forward_observed(x.flatten(1, 3), "head.", observer)
    }
}

/// `pool(x)`: non-overlapping windows (kernel = stride, no padding or dilation, floor mode),
/// the only kind `Cnn::new` builds, by Kiln's kernel on the CPU backends
/// ([`kiln_kernels::pool::max_pool2d`]), anything else by burn's.
fn max_pool<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [k, k_w] = pool.kernel_size;
    let plain = k == k_w
        && pool.stride == pool.kernel_size
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && matches!(pool.padding, burn::nn::PaddingConfig2d::Valid);
    if plain {
        match kiln_kernels::pool::max_pool2d(x, k) {
            Ok(y) => y,
            Err(x) => pool.forward(x),
        }
    } else {
        pool.forward(x)
    }
}

/// What a convolution `layer` with this `padding` and `stride` multiplies its weight with:
/// `[images * positions, c_in * kh * kw]`, each row one output position's patch in the weight's
/// `(c_in, kh, kw)` order (for calibration observers).
pub(crate) fn conv_patches<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
    padding: usize,
    stride: usize,
) -> Tensor<B, 2> {
    let [_, _, kh, kw] = layer.weight.dims();
    let options = UnfoldOptions::new([stride, stride], [padding, padding], [1, 1]);
    let patches = unfold4d(x, [kh, kw], options);
    let [n, d, l] = patches.dims();
    patches.swap_dims(1, 2).reshape([n * l, d])
}
