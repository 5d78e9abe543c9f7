//! LoRA adapters on the GPT's linear layers (Hu et al., 2021, as PEFT computes them): a layer
//! `y = x W + b` becomes `y = x W + b + s · dropout(x) A B` with `A` `[d_in, r]`, `B`
//! `[r, d_out]` and `s = alpha / r`. `A` starts uniform in `±1/sqrt(d_in)` (PEFT's
//! `kaiming_uniform_(a = sqrt(5))` on its `[r, d_in]` matrix), `B` at zero, so a fresh adapter
//! changes nothing. [`Gpt::with_lora`] freezes every base parameter and adds adapters to the
//! chosen projections; [`Lora::merged`] folds one into its layer's weight for export.

use anyhow::{bail, Result};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kiln_core::config::{FinetuneSection, Precision};
use kiln_kernels::add::add;

use super::Gpt;
use crate::dropout::dropout;
use crate::init::HostInit;
use crate::precision::{affine, linear};

/// The projections an adapter can sit on, by Kiln's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraTarget {
    /// `attn.c_attn`: queries, keys and values (`q_proj`, `k_proj`, `v_proj` in Llama).
    Attn,
    /// `attn.c_proj`: the attention output (`o_proj`).
    AttnProj,
    /// `mlp.c_fc`: the expansion (`gate_proj` and `up_proj` of a SwiGLU).
    Fc,
    /// `mlp.c_proj`: the projection back (`down_proj`).
    MlpProj,
}

impl LoraTarget {
    /// The target of a `finetune.target_modules` name (`"attn.c_attn"`, ...).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "attn.c_attn" => LoraTarget::Attn,
            "attn.c_proj" => LoraTarget::AttnProj,
            "mlp.c_fc" => LoraTarget::Fc,
            "mlp.c_proj" => LoraTarget::MlpProj,
            other => bail!(
                "finetune.target_modules: {other:?} is not a projection of Kiln's GPT; use {:?}",
                kiln_core::config::LORA_TARGETS
            ),
        })
    }

    /// The name checkpoints give the adapted layer (`attn.c_attn`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Attn => "attn.c_attn",
            LoraTarget::AttnProj => "attn.c_proj",
            LoraTarget::Fc => "mlp.c_fc",
            LoraTarget::MlpProj => "mlp.c_proj",
        }
    }
}

/// Which adapters to add, and their rank, scale and dropout.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// The rank `r` of `A B`.
    pub rank: usize,
    /// `alpha`: the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// The projections adapted in every block.
    pub targets: Vec<LoraTarget>,
}

impl LoraSpec {
    /// The adapters of a run's `[finetune]` section.
    pub fn of(finetune: &FinetuneSection) -> Result<Self> {
        Ok(LoraSpec {
            rank: finetune.lora_rank,
            alpha: finetune.alpha(),
            dropout: finetune.lora_dropout,
            targets: (finetune.target_modules.iter())
                .map(|t| LoraTarget::from_name(t))
                .collect::<Result<_>>()?,
        })
    }
}

/// A low-rank update of one linear layer.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// `A` `[d_in, r]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `B` `[r, d_out]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
    /// Dropout on the input while training.
    #[module(skip)]
    pub dropout: f64,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter of a `d_in -> d_out` layer (its update is zero).
    pub fn new(
        d_in: usize,
        d_out: usize,
        spec: &LoraSpec,
        init: &mut HostInit,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f32).sqrt();
        Self {
            lora_a: Param::from_tensor(init.uniform_tensor([d_in, spec.rank], bound, device)),
            lora_b: Param::from_tensor(Tensor::zeros([spec.rank, d_out], device)),
            scale: spec.alpha / spec.rank as f64,
            dropout: spec.dropout,
        }
    }

    /// `s · dropout(x) A B` for `x` `[.., d_in]`.
    pub fn update<const D: usize>(&self, x: Tensor<B, D>, precision: Precision) -> Tensor<B, D> {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let x = dropout(x, self.dropout).reshape([rows, dims[D - 1]]);
        let low = affine(x, self.lora_a.val(), None, precision);
        let y = affine(low, self.lora_b.val(), None, precision).mul_scalar(self.scale);
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        y.reshape(out)
    }

    /// `W + s A B`: the layer's weight `[d_in, d_out]` with this update folded in.
    pub fn merged(&self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        weight
            + self
                .lora_a
                .val()
                .matmul(self.lora_b.val())
                .mul_scalar(self.scale)
    }
}

/// `x W + b`, plus the adapter's update when there is one.
pub(super) fn adapted<B: Backend, const D: usize>(
    layer: &Linear<B>,
    lora: &Option<Lora<B>>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    match lora {
        None => linear(layer, x, precision),
        Some(lora) => add(
            linear(layer, x.clone(), precision),
            lora.update(x, precision),
        ),
    }
}

impl<B: Backend> Gpt<B> {
    /// This model with every base parameter frozen (no gradient, so the optimizer leaves it) and
    /// a fresh adapter on each projection of `spec.targets` in every block.
    pub fn with_lora(self, spec: &LoraSpec, init: &mut HostInit) -> Self {
        let mut gpt = self.no_grad();
        let s = gpt.shape;
        let device = gpt.wte.weight.device();
        let (e, hidden) = (s.n_embd, s.mlp_hidden);
        for block in &mut gpt.h {
            for target in &spec.targets {
                let (slot, d_in, d_out) = match target {
                    LoraTarget::Attn => (&mut block.attn.c_attn_lora, e, s.qkv_width()),
                    LoraTarget::AttnProj => (&mut block.attn.c_proj_lora, e, e),
                    LoraTarget::Fc => (&mut block.mlp.c_fc_lora, e, s.fc_width()),
                    LoraTarget::MlpProj => (&mut block.mlp.c_proj_lora, hidden, e),
                };
                *slot = Some(Lora::new(d_in, d_out, spec, init, &device));
            }
        }
        gpt
    }

    /// This model with every adapter folded into its layer's weight and removed: the plain GPT
    /// that computes the same.
    pub fn merge_lora(mut self) -> Self {
        let merge = |layer: &mut Linear<B>, lora: &mut Option<Lora<B>>| {
            if let Some(lora) = lora.take() {
                let merged = lora.merged(layer.weight.val());
                layer.weight = Param::from_tensor(merged);
            }
        };
        for block in &mut self.h {
            merge(&mut block.attn.c_attn, &mut block.attn.c_attn_lora);
            merge(&mut block.attn.c_proj, &mut block.attn.c_proj_lora);
            merge(&mut block.mlp.c_fc, &mut block.mlp.c_fc_lora);
            merge(&mut block.mlp.c_proj, &mut block.mlp.c_proj_lora);
        }
        self
    }
}
