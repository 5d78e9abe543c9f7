#!/usr/bin/env python3
"""CPU training-step throughput of Kiln against PyTorch, measured in one run.

    bash benches/setup-torch.sh            # once: PyTorch into benches/.venv
    benches/.venv/bin/python benches/run.py [--reps 3] [--threads 2]

Builds `kiln-bench` (release), then for each model (MLP 784-256-256-10 and the CNN conv 1->32 3x3,
conv 32->64 3x3, max-pool 2, linear 9216->128->10; batch 64; AdamW) runs Kiln on flex and on
ndarray and PyTorch, interleaved, `reps` times, and keeps the median steps/s of each. Writes
benches/results/cpu-training-step.{json,md} with the machine description and the Kiln/PyTorch
ratios. Absolute numbers on a shared machine are noisy; the ratios from interleaved runs are the
result.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"

# (warmup, timed steps) per model and runner: ndarray's convolution is ~100x slower than the
# others', so it gets fewer steps to keep the run short.
STEPS = {
    ("mlp", "flex"): (20, 300), ("mlp", "ndarray"): (20, 300), ("mlp", "pytorch"): (20, 300),
    ("cnn", "flex"): (2, 20), ("cnn", "ndarray"): (1, 3), ("cnn", "pytorch"): (3, 30),
}


def sh(cmd, env=None):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(),
        "rustc": sh(["rustc", "--version"]).strip(),
        "python": platform.python_version(),
    }


def run_one(model, runner, threads, batch):
    warmup, steps = STEPS[(model, runner)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    args = ["--model", model, "--batch", str(batch), "--warmup", str(warmup), "--steps", str(steps)]
    if runner == "pytorch":
        cmd = [sys.executable, "benches/torch_ref.py", "--threads", str(threads)] + args
    else:
        cmd = [str(ROOT / "target/release/kiln-bench"), "--backend", runner] + args
    return json.loads(sh(cmd, env).strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()

    subprocess.run(["cargo", "build", "--release", "-p", "kiln-benches"], check=True, cwd=ROOT)
    runs = {}
    for model in ["mlp", "cnn"]:
        for rep in range(a.reps):
            for runner in ["flex", "ndarray", "pytorch"]:
                r = run_one(model, runner, a.threads, a.batch)
                runs.setdefault((model, runner), []).append(r)
                print(f"{model:4} {runner:8} rep {rep}: {r['steps_per_sec']:.2f} steps/s", file=sys.stderr)

    torch_version = runs[("mlp", "pytorch")][0].get("torch_version", "?")
    rows = []
    for model in ["mlp", "cnn"]:
        ref = statistics.median(r["steps_per_sec"] for r in runs[(model, "pytorch")])
        for runner in ["flex", "ndarray"]:
            sps = statistics.median(r["steps_per_sec"] for r in runs[(model, runner)])
            rows.append({"model": model, "backend": runner, "kiln_steps_per_sec": sps,
                         "pytorch_steps_per_sec": ref, "ratio_kiln_over_pytorch": sps / ref,
                         "kiln_all": [r["steps_per_sec"] for r in runs[(model, runner)]],
                         "pytorch_all": [r["steps_per_sec"] for r in runs[(model, "pytorch")]]})
    result = {
        "benchmark": "CPU training step (forward, cross-entropy, backward, AdamW), batch %d" % a.batch,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "threads": a.threads, "reps": a.reps, "torch_version": torch_version,
        "steps": {f"{m}/{r}": list(v) for (m, r), v in STEPS.items()}, "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu-training-step.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# CPU training-step throughput: Kiln vs PyTorch",
        "",
        f"{result['benchmark']}; {a.threads} threads each; median of {a.reps} interleaved runs; {result['date']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; {m['rustc']}; PyTorch {torch_version}.",
        "",
        "| model | Kiln backend | Kiln steps/s | PyTorch steps/s | Kiln / PyTorch |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['kiln_steps_per_sec']:.2f} | {r['pytorch_steps_per_sec']:.2f} | {r['ratio_kiln_over_pytorch']:.3f}x |")
    lines.append("")
    (RESULTS / "cpu-training-step.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
