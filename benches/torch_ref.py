#!/usr/bin/env python3
"""PyTorch (CPU) reference for Kiln's training-step throughput benchmark.

Usage:
    python benches/torch_ref.py --model mlp|cnn --batch 64 --threads N \
        --warmup W --steps S

Prints exactly one JSON line to stdout:
    {"framework": "pytorch", "torch_version": ..., "model": ..., "batch": ...,
     "threads": ..., "steps": ..., "seconds": ..., "steps_per_sec": ...,
     "samples_per_sec": ...}

One step = forward, cross-entropy loss, zero_grad(set_to_none=True),
backward, AdamW step (lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0.0) on a fixed random batch created once before timing.
Set up the environment with benches/setup-torch.sh.
"""

import argparse
import json
import math
import sys
import time

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
    raise ValueError(f"unknown model {name!r}")


def input_shape(name: str, batch: int):
    return (batch, 784) if name == "mlp" else (batch, 1, 28, 28)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["mlp", "cnn"], required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    if args.batch < 1 or args.threads < 1 or args.warmup < 0 or args.steps < 1:
        p.error("--batch, --threads and --steps must be >= 1, --warmup >= 0")

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

    model = build_model(args.model)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )

    x = torch.randn(*input_shape(args.model, args.batch), dtype=torch.float32)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), dtype=torch.int64)

    def step() -> torch.Tensor:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    loss = None
    for _ in range(args.warmup):
        loss = step()
    if loss is not None:
        loss.item()  # sync before starting the clock

    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    final_loss = loss.item()
    seconds = time.perf_counter() - t0

    if not math.isfinite(final_loss):
        print(f"torch_ref: non-finite final loss {final_loss}", file=sys.stderr)
        return 1

    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch_version": torch.__version__,
                "model": args.model,
                "batch": args.batch,
                "threads": args.threads,
                "steps": args.steps,
                "seconds": seconds,
                "steps_per_sec": args.steps / seconds,
                "samples_per_sec": args.steps * args.batch / seconds,
            }
        ),
        flush=True,
    )
    print(f"torch_ref: final loss {final_loss:.6f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
