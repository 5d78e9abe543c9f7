//! The bare burn loop: the benchmark's models written with burn's own modules, cross-entropy
//! loss and AdamW, and no Kiln code, to tell Kiln's framework cost (or gain) from burn's.
//! `kiln-bench --framework burn` runs it in the same binary as Kiln's step, so both have the
//! same allocator settings, SIMD features and threads.
//!
//! The models match `kiln-bench`'s in shape and work: MLP 784-256-256-10; CNN conv 1->32 3x3,
//! conv 32->64 3x3, max-pool 2, 9216->128->10; GPT as burn's `TransformerEncoder` (pre-norm,
//! GELU, causal mask) with token and position embeddings, a final LayerNorm and an untied head
//! (burn has no weight tying). Initialization is burn's default; AdamW is burn's, with weight
//! decay 0 (MLP, CNN) or 0.1 on every parameter (GPT: burn has no parameter groups).

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};

#[derive(Module, Debug)]
pub struct BurnMlp<B: Backend> {
    layers: Vec<Linear<B>>,
}

impl<B: Backend> BurnMlp<B> {
    fn new(device: &B::Device) -> Self {
        let widths = [784, 256, 256, 10];
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self { layers }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, l)| {
            let y = l.forward(x);
            if i == last {
                y
            } else {
                relu(y)
            }
        })
    }
}

#[derive(Module, Debug)]
pub struct BurnCnn<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> BurnCnn<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([1, 32], [3, 3]).init(device),
            conv2: Conv2dConfig::new([32, 64], [3, 3]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(9216, 128).init(device),
            fc2: LinearConfig::new(128, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let x = relu(self.conv1.forward(x.reshape([n, 1, 28, 28])));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        self.fc2.forward(relu(self.fc1.forward(x.flatten(1, 3))))
    }
}

#[derive(Module, Debug)]
pub struct BurnGpt<B: Backend> {
    wte: Embedding<B>,
    wpe: Embedding<B>,
    blocks: TransformerEncoder<B>,
    ln_f: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> BurnGpt<B> {
    fn new(
        vocab: usize,
        layers: usize,
        heads: usize,
        width: usize,
        block: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            wte: EmbeddingConfig::new(vocab, width).init(device),
            wpe: EmbeddingConfig::new(block, width).init(device),
            blocks: TransformerEncoderConfig::new(width, 4 * width, heads, layers)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            ln_f: LayerNormConfig::new(width).init(device),
            head: LinearConfig::new(width, vocab).init(device),
        }
    }

    fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [n, t] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let x = self.wte.forward(tokens) + self.wpe.forward(positions);
        let mask = generate_autoregressive_mask::<B>(n, t, &device);
        let x = self
            .blocks
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        let logits = self.head.forward(self.ln_f.forward(x));
        let vocab = logits.dims()[2];
        logits.reshape([n * t, vocab])
    }
}

/// Trains `forward`'s model for `warmup` then `steps` steps on one fixed batch with burn's
/// AdamW (lr 1e-3) and cross-entropy, and returns the timed seconds, the last loss and the
/// parameter count. Like Kiln's benchmark, the loss is read only after the last step.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend, M, X: Clone>(
    mut model: M,
    forward: impl Fn(&M, X) -> Tensor<B, 2>,
    x: X,
    y: Tensor<B, 1, Int>,
    weight_decay: f32,
    warmup: usize,
    steps: usize,
) -> (f64, f64, usize)
where
    M: burn::module::AutodiffModule<B>,
{
    let params = model.num_params();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay)
        .init::<B, M>();
    let loss_fn = CrossEntropyLossConfig::new().init(&y.device());
    let mut run = |count: usize, mut model: M| {
        let mut last = None;
        for _ in 0..count {
            let loss = loss_fn.forward(forward(&model, x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
            last = Some(loss);
        }
        (model, last.map_or(0.0, |l| l.into_scalar().elem::<f64>()))
    };
    (model, _) = run(warmup, model);
    let start = std::time::Instant::now();
    let (_, loss) = run(steps, model);
    (start.elapsed().as_secs_f64(), loss, params)
}

/// The bare burn models by `kiln-bench --model` name.
pub fn mlp<B: Backend>(device: &B::Device) -> BurnMlp<B> {
    BurnMlp::new(device)
}

/// See [`mlp`].
pub fn cnn<B: Backend>(device: &B::Device) -> BurnCnn<B> {
    BurnCnn::new(device)
}

/// See [`mlp`].
pub fn gpt<B: Backend>(
    vocab: usize,
    layers: usize,
    heads: usize,
    width: usize,
    block: usize,
    device: &B::Device,
) -> BurnGpt<B> {
    BurnGpt::new(vocab, layers, heads, width, block, device)
}

/// Forward passes, as `train` wants them.
pub fn mlp_forward<B: Backend>(m: &BurnMlp<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    m.forward(x)
}

/// See [`mlp_forward`].
pub fn cnn_forward<B: Backend>(m: &BurnCnn<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    m.forward(x)
}

/// See [`mlp_forward`].
pub fn gpt_forward<B: Backend>(m: &BurnGpt<B>, x: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    m.forward(x)
}
