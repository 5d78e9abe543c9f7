#!/usr/bin/env python3
"""PyTorch reference for Kiln's training-step throughput benchmark.

Usage:
    python benches/torch_ref.py --model mlp|cnn|resnet --batch 64 --threads N \
        --warmup W --steps S [--device cpu|cuda]
    python benches/torch_ref.py --model gpt --batch 32 --threads N \
        --warmup W --steps S [--vocab 65 --n-layer 4 --n-head 4 --n-embd 128 \
        --block 64 --dropout 0.0 --bias 1 --tie 1] [--precision f32|bf16|f16] \
        [--style gpt2|llama --n-kv-head H] [--device cpu|cuda] [--peak-flops 989e12]

Prints exactly one JSON line to stdout:
    {"framework": "pytorch", "torch_version": ..., "model": ..., "batch": ...,
     "threads": ..., "device": ..., "precision": ..., "steps": ..., "seconds": ...,
     "cpu_seconds": ...,
     "steps_per_sec": ..., "samples_per_sec": ...}
gpt adds "tokens_per_sec" (steps * batch * block / seconds), "params" (tied
weights counted once), "flops_per_token" and the model's shape; on cuda every
model adds "gpu" and "peak_mem_bytes" (torch.cuda.max_memory_allocated()), and
gpt adds "mfu" (tokens_per_sec * flops_per_token / peak_flops) and "peak_flops".

mlp / cnn / resnet: one step = forward, cross-entropy loss, zero_grad(set_to_none=True),
backward, AdamW step (lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0.0) on a fixed random batch created once before timing.

gpt: a decoder-only transformer with the architecture of Kiln's `Gpt`
(crates/kiln-models/src/gpt.rs; GPT-2 / nanoGPT): token + position embeddings,
dropout, n_layer pre-LayerNorm blocks (x + attn(ln_1(x)), x + mlp(ln_2(x))),
causal multi-head attention via F.scaled_dot_product_attention, GELU (erf) MLP
4x wide, ln_f, LM head (tied to wte with --tie 1). GPT-2 init. Loss: mean
cross-entropy over all batch*block positions of a fixed random [batch, block]
token batch. AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.1 on
Linear weights only (not on biases, LayerNorms, wte, wpe); fused on CUDA.
`--style llama` makes it Kiln's Llama style (`norm = "rmsnorm"`, `position = "rope"`,
`mlp = "swiglu"`): RMSNorm (eps 1e-5), no wpe, rotary embeddings on queries and keys (base
10000, rotate_half as transformers' Llama), `--n-kv-head` key/value heads (grouped-query
attention through scaled_dot_product_attention's enable_gqa), SwiGLU MLP of Kiln's default
width (8 n_embd / 3 rounded up to 32).
bf16 / f16: torch.autocast around forward + loss with f32 master weights, and
a GradScaler for f16 on CUDA.

Set up the environment with benches/setup-torch.sh.
"""

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 10


def build_model(name: str) -> nn.Module:
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(784, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, NUM_CLASSES),
        )
    if name == "cnn":
        # 28x28 -> conv3 -> 26x26 -> conv3 -> 24x24 -> pool2 -> 12x12; 64*12*12 = 9216
        return nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(9216, 128),
            nn.ReLU(),
            nn.Linear(128, NUM_CLASSES),
        )
    if name == "resnet":
        return ResNet()
    raise ValueError(f"unknown model {name!r}")


class BasicBlock(nn.Module):
    """Kiln's ResNet block (crates/kiln-models/src/resnet.rs): conv3-BN-ReLU-conv3-BN plus the
    input (through a 1x1 conv and BN where width or size changes), then ReLU."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Kiln's default `model.kind = "resnet"`: a 3x3 stem, stages [2, 2, 2] of widths
    [16, 32, 64] (the last two halving the map), global average pooling, a linear classifier."""

    def __init__(self, stages=(2, 2, 2), widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks, c_in = [], widths[0]
        for s, (n, c_out) in enumerate(zip(stages, widths)):
            for b in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if s > 0 and b == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def input_shape(name: str, batch: int):
    return (batch, 784) if name == "mlp" else (batch, 1, 28, 28)


# ----------------------------------------------------------------------------- GPT


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias, n_kv_head=None, rope=False):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_kv_head = n_kv_head or n_head
        hd = n_embd // n_head
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * self.n_kv_head * hd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout
        self.rope = rope

    def forward(self, x):
        b, t, c = x.size()
        hd = c // self.n_head
        kv = self.n_kv_head * hd
        q, k, v = self.c_attn(x).split([c, kv, kv], dim=2)
        q = q.view(b, t, self.n_head, hd).transpose(1, 2)
        k = k.view(b, t, self.n_kv_head, hd).transpose(1, 2)
        v = v.view(b, t, self.n_kv_head, hd).transpose(1, 2)
        if self.rope:
            inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=x.device).float() / hd))
            freqs = torch.outer(torch.arange(t, device=x.device).float(), inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        # scale defaults to 1/sqrt(head_dim); dropout on the attention probabilities.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()  # exact (erf), like Kiln's burn::tensor::activation::gelu
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class SwiGLU(nn.Module):
    def __init__(self, n_embd, dropout, bias):
        super().__init__()
        hidden = -(-(8 * n_embd // 3) // 32) * 32
        self.c_fc = nn.Linear(n_embd, 2 * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


def norm(n_embd, bias, llama):
    return nn.RMSNorm(n_embd, eps=1e-5) if llama else nn.LayerNorm(n_embd, eps=1e-5, bias=bias)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias, llama=False, n_kv_head=None):
        super().__init__()
        self.ln_1 = norm(n_embd, bias, llama)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, n_kv_head, rope=llama)
        self.ln_2 = norm(n_embd, bias, llama)
        self.mlp = SwiGLU(n_embd, dropout, bias) if llama else MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab, n_layer, n_head, n_embd, block, dropout, bias, tie,
                 llama=False, n_kv_head=None):
        super().__init__()
        self.block = block
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = None if llama else nn.Embedding(block, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout, bias, llama, n_kv_head)
                               for _ in range(n_layer))
        self.ln_f = norm(n_embd, bias, llama)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight
        # GPT-2 init: normal(0, 0.02) weights, zero biases (LayerNorms default to one/zero),
        # residual projections normal(0, 0.02 / sqrt(2 n_layer)).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def num_params(self, non_embedding=False):
        # parameters() yields a tied weight once.
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self):
        # nanoGPT's estimate_mfu (PaLM appendix B): forward + backward per token.
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * self.n_layer * self.n_embd * self.block

    def forward(self, idx):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) if self.wpe is None else self.wte(idx) + self.wpe(pos)
        x = self.drop(x)
        for blk in self.h:
            x = blk(x)
        return self.lm_head(self.ln_f(x))

    def param_groups(self, weight_decay):
        """Decay only Linear weights (incl. an untied lm_head); no decay on biases, LayerNorms,
        wte, wpe (a tied lm_head is wte). Matches Kiln's Model::no_decay."""
        no_decay = {id(self.wte.weight)} | ({id(self.wpe.weight)} if self.wpe is not None else set())
        decay, other = [], []
        for p in self.parameters():
            (decay if p.dim() >= 2 and id(p) not in no_decay else other).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0},
        ]


# ----------------------------------------------------------------------------- main

DTYPES = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["mlp", "cnn", "resnet", "gpt"], required=True)
    p.add_argument("--batch", type=int, default=None,
                   help="samples (mlp/cnn, default 64) or sequences (gpt, default 32)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=list(DTYPES), default="f32")
    # GPT shape (CPU config defaults).
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bias", type=int, choices=[0, 1], default=1)
    p.add_argument("--tie", type=int, choices=[0, 1], default=1)
    p.add_argument("--style", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--n-kv-head", type=int, default=None)
    p.add_argument("--peak-flops", type=float, default=989e12,
                   help="peak FLOP/s for MFU on cuda (default 989e12: H100 SXM bf16 dense)")
    args = p.parse_args()
    if args.batch is None:
        args.batch = 32 if args.model == "gpt" else 64
    if args.batch < 1 or args.threads < 1 or args.warmup < 0 or args.steps < 1:
        p.error("--batch, --threads and --steps must be >= 1, --warmup >= 0")
    if args.model == "gpt" and args.n_embd % args.n_head != 0:
        p.error("--n-embd must be divisible by --n-head")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")

    try:
        torch.set_num_threads(args.threads)
    except Exception as e:  # pragma: no cover
        print(f"torch_ref: set_num_threads({args.threads}) failed: {e}", file=sys.stderr)
    try:
        # Only allowed before any inter-op parallel work has started.
        torch.set_num_interop_threads(1)
    except Exception as e:  # pragma: no cover
        print(f"torch_ref: set_num_interop_threads(1) failed: {e}", file=sys.stderr)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cuda = args.device == "cuda"

    if args.model == "gpt":
        model = GPT(args.vocab, args.n_layer, args.n_head, args.n_embd, args.block,
                    args.dropout, bool(args.bias), bool(args.tie),
                    llama=args.style == "llama", n_kv_head=args.n_kv_head).to(dev)
        groups = model.param_groups(0.1)
        x = torch.randint(0, args.vocab, (args.batch, args.block), dtype=torch.int64, device=dev)
        y = torch.randint(0, args.vocab, (args.batch, args.block), dtype=torch.int64, device=dev)
    else:
        model = build_model(args.model).to(dev)
        groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
        x = torch.randn(*input_shape(args.model, args.batch), dtype=torch.float32, device=dev)
        y = torch.randint(0, NUM_CLASSES, (args.batch,), dtype=torch.int64, device=dev)
    model.train()
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=cuda)

    amp_dtype = DTYPES[args.precision]
    autocast = (lambda: torch.autocast(device_type=args.device, dtype=amp_dtype)) \
        if amp_dtype is not None else nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and args.precision == "f16")

    def step() -> torch.Tensor:
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    loss = None
    for _ in range(args.warmup):
        loss = step()
    if loss is not None:
        loss.item()  # sync before starting the clock
    sync()

    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss = step()
    sync()
    final_loss = loss.item()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0

    if not math.isfinite(final_loss):
        print(f"torch_ref: non-finite final loss {final_loss}", file=sys.stderr)
        return 1

    out = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "device": args.device,
        "precision": args.precision,
        "steps": args.steps,
        "seconds": seconds,
        # Process CPU time over the timed steps (all threads): cpu_seconds / seconds well below
        # --threads means the machine was busy with something else.
        "cpu_seconds": cpu_seconds,
        "steps_per_sec": args.steps / seconds,
        "samples_per_sec": args.steps * args.batch / seconds,
    }
    if args.model == "gpt":
        out.update({
            "vocab": args.vocab, "n_layer": args.n_layer, "n_head": args.n_head,
            "n_embd": args.n_embd, "block": args.block, "dropout": args.dropout,
            "style": args.style, "n_kv_head": args.n_kv_head or args.n_head,
            "bias": args.bias, "tie": args.tie,
            "tokens_per_sec": args.steps * args.batch * args.block / seconds,
            "params": model.num_params(),
            "flops_per_token": model.flops_per_token(),
        })
    else:
        out["params"] = sum(p.numel() for p in model.parameters())
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["peak_mem_bytes"] = torch.cuda.max_memory_allocated(dev)
        if args.model == "gpt":
            out["peak_flops"] = args.peak_flops
            out["mfu"] = out["tokens_per_sec"] * out["flops_per_token"] / args.peak_flops
    print(json.dumps(out), flush=True)
    print(f"torch_ref: final loss {final_loss:.6f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
