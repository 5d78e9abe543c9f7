#!/usr/bin/env python3
"""Checkpoint cost: how long the training loop is blocked per checkpoint against the full write.

    python3 benches/checkpoint_stall.py [--reps 3]

Builds `kiln` (release), then for each case trains with `kiln train` twice, interleaved, `reps`
times: once checkpointing every K steps and once with `checkpoint.every_steps = 0` (only the final
checkpoint). From the `checkpoint` events in metrics.jsonl it takes, per checkpoint:

- stall_secs: the time the loop was blocked (copying model and optimizer state to host memory,
  plus waiting for the previous write if it was still in flight);
- write_secs: the background writer's full time (encode, sha256, write, fsync, rename, prune).

The wall times of the two runs (median, min and max) show the whole cost as the user sees it,
including the writer thread competing with training for the CPU cores; on this shared machine
their run-to-run spread is often larger than the checkpoints' cost. Writes benches/results/checkpoint-stall.{json,md}. Needs only Python 3.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
KILN = ROOT / "target" / "release" / "kiln"

# name, config, overrides, steps, checkpoint every K steps, what it is
CASES = [
    ("fashion-mnist-cnn", "configs/fashion-mnist-cnn.toml", [], 300, 25,
     "the shipped Fashion-MNIST CNN"),
    ("fashion-mnist-mlp", "configs/fashion-mnist-mlp.toml", [], 600, 50,
     "the shipped Fashion-MNIST MLP 784-256-256-10, the largest shipped model by parameters"),
    ("mlp-4096x3", "configs/fashion-mnist-mlp.toml", ["model.hidden=[4096, 4096, 4096]"], 60, 10,
     "a wide MLP 784-4096-4096-4096-10 (stress case, ~37M parameters, ~450 MB per checkpoint)"),
]


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "")
    mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                      if l.startswith("MemTotal")).split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "os": platform.platform()}


def parameters(safetensors_file):
    with open(safetensors_file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for d in info["shape"]:
                count *= d
            total += count
    return total


def train(config, overrides, steps, every, out):
    args = [str(KILN), "train", config, "--set", f"run.output_dir={out}",
            "--set", f"train.max_steps={steps}", "--set", "train.eval_every=0",
            "--set", f"train.log_every={max(every, 10)}",
            "--set", f"checkpoint.every_steps={every}", "--set", "checkpoint.keep_last=2"]
    for o in overrides:
        args += ["--set", o]
    started = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    run = next(p for p in Path(out).iterdir() if p.is_dir())
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    ckpts = [e for e in events if e.get("event") == "checkpoint"]
    steps_per_sec = [e["samples_per_sec"] for e in events
                     if e.get("split") == "train" and "samples_per_sec" in e]
    params = parameters(Path(ckpts[-1]["dir"]) / "model.safetensors")
    return wall, ckpts, steps_per_sec, params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", help="run only the case with this name")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "kiln-cli"], check=True, cwd=ROOT)

    rows = []
    for name, config, overrides, steps, every, what in CASES:
        if a.only and a.only != name:
            continue
        stalls, writes, sizes, with_ckpt, without, sps = [], [], [], [], [], []
        extra = steps // every - 1  # the final-step checkpoint happens in both runs
        params = 0
        for rep in range(a.reps):
            for k in (every, 0):
                out = tempfile.mkdtemp(prefix="kiln-ckpt-bench-", dir=ROOT / "target")
                try:
                    wall, ckpts, s, params = train(config, overrides, steps, k, out)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                if k:
                    with_ckpt.append(wall)
                    # The final checkpoint is written while the run waits anyway: leave it out.
                    mid = [c for c in ckpts if c["step"] != steps]
                    stalls += [c["stall_secs"] for c in mid]
                    writes += [c["write_secs"] for c in mid]
                    sizes += [c["bytes"] for c in mid]
                    sps += s
                else:
                    without.append(wall)
            print(f"{name} rep {rep + 1}/{a.reps}: with {with_ckpt[-1]:.2f} s, "
                  f"without {without[-1]:.2f} s", flush=True)
        batch = 128
        step_secs = batch / statistics.median(sps)
        row = {
            "case": name, "what": what, "config": config, "overrides": overrides,
            "parameters": params, "checkpoint_bytes": int(statistics.median(sizes)),
            "steps": steps, "every_steps": every, "checkpoints_measured": len(stalls),
            "step_secs_median": step_secs,
            "stall_secs_median": statistics.median(stalls), "stall_secs_max": max(stalls),
            "write_secs_median": statistics.median(writes), "write_secs_max": max(writes),
            "stall_over_write": statistics.median(stalls) / statistics.median(writes),
            "wall_secs_with": statistics.median(with_ckpt),
            "wall_secs_with_range": [min(with_ckpt), max(with_ckpt)],
            "wall_secs_without": statistics.median(without),
            "wall_secs_without_range": [min(without), max(without)],
            "overhead_secs_per_checkpoint":
                (statistics.median(with_ckpt) - statistics.median(without)) / extra,
        }
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)

    result = {"benchmark": "checkpoint stall vs write", "date": datetime.date.today().isoformat(),
              "machine": machine(), "reps": a.reps, "backend": "flex (auto)",
              "disk": "the repository's target/ directory", "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoint-stall.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# Checkpoint stall per checkpoint vs the full write",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; flex backend; "
        f"{result['date']}; medians of {a.reps} interleaved runs per case "
        "(`python3 benches/checkpoint_stall.py`).",
        "",
        "Stall: the time the training loop is blocked per checkpoint (state copied to host "
        "memory, handed to the background writer). Write: the writer's full time (encode, "
        "sha256, write, fsync, rename, prune) on a background thread. Wall time: the whole run "
        "checkpointing every K steps against the same run with only the final checkpoint, "
        "median [min–max]; the difference includes the writer competing for the 2 cores, and "
        "on this shared machine the spread between repeats is often larger than it.",
        "",
        "| model | parameters | checkpoint | step | stall (median / max) | write (median / max) "
        "| stall / write | wall time, K / no checkpoints |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['parameters']:,} | {r['checkpoint_bytes'] / 1e6:.1f} MB "
            f"| {r['step_secs_median'] * 1e3:.1f} ms "
            f"| {r['stall_secs_median'] * 1e3:.1f} / {r['stall_secs_max'] * 1e3:.1f} ms "
            f"| {r['write_secs_median'] * 1e3:.1f} / {r['write_secs_max'] * 1e3:.1f} ms "
            f"| {r['stall_over_write']:.3f} "
            f"| {r['wall_secs_with']:.1f} [{r['wall_secs_with_range'][0]:.1f}–{r['wall_secs_with_range'][1]:.1f}] s / "
            f"{r['wall_secs_without']:.1f} [{r['wall_secs_without_range'][0]:.1f}–{r['wall_secs_without_range'][1]:.1f}] s |")
    lines += ["", "Cases:", ""] + [f"- {r['case']}: {r['what']}; {r['steps']} steps, a checkpoint "
                                   f"every {r['every_steps']}." for r in rows]
    (RESULTS / "checkpoint-stall.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
