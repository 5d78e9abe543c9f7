#!/usr/bin/env python3
"""The `kiln train` loop against its own train_step, interleaved, on the benchmark MLP.

    python3 benches/loop_cost.py [--reps 9] [--threads 2]

Each rep runs, back to back on flex: kiln-bench's MLP train_step on one cached batch, the same on
256 different batches (fresh data, as a loop sees), and `kiln train benches/guard-train.toml` (the
same MLP, batch and optimizer on Fashion-MNIST: loader thread, host-to-device copies, logging,
final checkpoint), samples/s from its metrics.jsonl (the train windows after the first). Prints
the medians and the ratio `kiln train` / train_step for both, and the share of `kiln train`'s
training time spent outside train_step (metrics.jsonl's step_secs against window_secs). Writes
target/guard/loop-cost.json. Needs target/release/kiln and kiln-bench; about 10 s a rep.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard import kiln_train  # noqa: E402  (the same `kiln train` run and metrics.jsonl reading)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ["--backend", "flex", "--model", "mlp", "--batch", "64", "--warmup", "20", "--steps", "600"]


def bench(env, batches):
    out = subprocess.run([str(ROOT / "target/release/kiln-bench")] + BENCH + ["--batches", str(batches)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["samples_per_sec"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    runs = {"step/1 batch": [], "step/256 batches": [], "kiln train": [], "outside share": []}
    for rep in range(a.reps):
        runs["step/1 batch"].append(bench(env, 1))
        runs["step/256 batches"].append(bench(env, 256))
        rate, share = kiln_train(argparse.Namespace(kiln=ROOT / "target/release/kiln"), env)
        runs["kiln train"].append(rate)
        runs["outside share"].append(share)
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in runs.items()))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"reps": a.reps, "threads": a.threads, "runs": runs, "median": med,
           "train_vs_step_1_batch": med["kiln train"] / med["step/1 batch"],
           "train_vs_step_256_batches": med["kiln train"] / med["step/256 batches"]}
    print(f"median samples/s: train_step {med['step/1 batch']:.0f} (1 batch), {med['step/256 batches']:.0f} "
          f"(256 batches); kiln train {med['kiln train']:.0f}: {out['train_vs_step_1_batch']:.3f}x and "
          f"{out['train_vs_step_256_batches']:.3f}x; outside train_step {med['outside share'] * 100:.1f}%")
    (ROOT / "target/guard").mkdir(parents=True, exist_ok=True)
    (ROOT / "target/guard/loop-cost.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
