#!/usr/bin/env python3
"""The `kiln train` loop against its own train_step, interleaved, on the benchmark MLP.

    python3 benches/loop_cost.py [--reps 9] [--threads 2]

Each rep runs, back to back on flex: kiln-bench's MLP train_step on one cached synthetic batch,
on 256 different synthetic batches (fresh data, as a loop sees), and on the first 600 batches of
benches/guard-train.toml's own training stream (`--data`: Fashion-MNIST, loaded, shuffled and
standardized as `kiln train` does, moved to the device before the clock starts), then
`kiln train benches/guard-train.toml` (the same MLP, batch, optimizer and 600 steps through the
whole loop: loader thread, host-to-device copies, logging, final checkpoint), samples/s from its
metrics.jsonl (the train windows after the first). Prints the medians, the ratio `kiln train` /
train_step for each, and the share of `kiln train`'s training time spent outside train_step
(metrics.jsonl's step_secs against window_secs). The ratio against the same data is the loop's
cost; the synthetic ones also carry what the data itself changes in the step (e.g. branches
that real activations mispredict). Writes target/guard/loop-cost.json. Needs target/release/kiln
and kiln-bench; about 15 s a rep.
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


def bench(env, batches, data=None):
    extra = ["--data", data] if data else []
    out = subprocess.run([str(ROOT / "target/release/kiln-bench")] + BENCH + ["--batches", str(batches)] + extra,
                         check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["samples_per_sec"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    runs = {"step/1 batch": [], "step/256 batches": [], "step/same data": [], "kiln train": [],
            "outside share": []}
    for rep in range(a.reps):
        runs["step/1 batch"].append(bench(env, 1))
        runs["step/256 batches"].append(bench(env, 256))
        runs["step/same data"].append(bench(env, 600, "benches/guard-train.toml"))
        rate, share = kiln_train(argparse.Namespace(kiln=ROOT / "target/release/kiln"), env)
        runs["kiln train"].append(rate)
        runs["outside share"].append(share)
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in runs.items()))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"reps": a.reps, "threads": a.threads, "runs": runs, "median": med,
           "train_vs_step_1_batch": med["kiln train"] / med["step/1 batch"],
           "train_vs_step_256_batches": med["kiln train"] / med["step/256 batches"],
           "train_vs_step_same_data": med["kiln train"] / med["step/same data"],
           # Each rep's own pair (adjacent in time), then the median of those ratios.
           "paired_train_vs_step_same_data": statistics.median(
               t / s for t, s in zip(runs["kiln train"], runs["step/same data"]))}
    print(f"median samples/s: train_step {med['step/1 batch']:.0f} (1 synthetic batch), "
          f"{med['step/256 batches']:.0f} (256), {med['step/same data']:.0f} (kiln train's data); "
          f"kiln train {med['kiln train']:.0f}: {out['train_vs_step_1_batch']:.3f}x, "
          f"{out['train_vs_step_256_batches']:.3f}x, {out['train_vs_step_same_data']:.3f}x; "
          f"(paired per rep: {out['paired_train_vs_step_same_data']:.3f}x); "
          f"outside train_step {med['outside share'] * 100:.1f}%")
    (ROOT / "target/guard").mkdir(parents=True, exist_ok=True)
    (ROOT / "target/guard/loop-cost.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
