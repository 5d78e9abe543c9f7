#!/usr/bin/env python3
"""What tracking costs a run: `kiln train` on benches/guard-train.toml (the MLP on Fashion-MNIST,
600 steps) logging every 10 steps, interleaved --reps times in four modes:

  off          tracking.system_metrics = false, no tracker (the loop alone)
  system       the default: system metrics (RSS, CPU) after each log window
  tensorboard  + TensorBoard event files
  mlflow       + TensorBoard + an MLflow server on 127.0.0.1 (started here, SQLite store)

    python3 benches/tracking_cost.py [--reps 7] [--threads 2] [--mlflow target/mlflow-env/bin/mlflow]

For each mode: the training throughput (median over the run's train windows after the first,
samples/s from metrics.jsonl) and the process's wall time, which includes waiting at the end for
the trackers (MLflow: the last batch, the artifacts, the status); each compared with the "off"
run of the same rep (the machine's speed drifts between reps), the median over reps. Prints a
Markdown table and writes target/guard/tracking-cost.json.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "benches/guard-train.toml"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(binary, workdir):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db", "--artifacts-destination", f"{workdir}/artifacts"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(720):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return proc, uri
        except OSError:
            time.sleep(0.25)
    proc.kill()
    sys.exit("the MLflow server did not start in 180 s")


def run(kiln, sets, env):
    args = [kiln, "train", CONFIG, "--backend", "flex", "--set", "train.log_every=10"]
    for s in sets:
        args += ["--set", s]
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - started
    lines = (ROOT / "target/guard/guard-train/metrics.jsonl").read_text().splitlines()
    train = [e for e in map(json.loads, lines) if e.get("split") == "train"][1:]
    return statistics.median(e["samples_per_sec"] for e in train), wall, len(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kiln", default=str(ROOT / "target/release/kiln"))
    p.add_argument("--mlflow", default=str(ROOT / "target/mlflow-env/bin/mlflow"))
    a = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), KILN_LOG="warn")
    workdir = tempfile.mkdtemp(prefix="kiln-tracking-cost-")
    server, uri = start_mlflow(a.mlflow, workdir)
    tb = f'tracking.tensorboard="{workdir}/tb"'
    modes = {
        "off": ["tracking.system_metrics=false"],
        "system": [],
        "tensorboard": [tb],
        "mlflow": [tb, f'tracking.mlflow="{uri}"', 'tracking.experiment="tracking-cost"'],
    }
    results = {m: [] for m in modes}
    try:
        for rep in range(a.reps):
            for mode, sets in modes.items():
                sps, wall, lines = run(a.kiln, sets, env)
                results[mode].append({"samples_per_sec": sps, "wall_secs": wall, "lines": lines})
                print(f"rep {rep} {mode:12} {sps:9.0f} samples/s  {wall:6.2f} s  {lines} lines", file=sys.stderr)
    finally:
        os.killpg(server.pid, 15)
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    # The machine's speed drifts between reps: compare each mode with "off" of the same rep.
    print("| mode | samples/s (median) | vs off (median of per-rep ratios) | wall s (median) | vs off (median of per-rep differences) |")
    print("|---|---|---|---|---|")
    for mode, rs in results.items():
        ratio = statistics.median(r["samples_per_sec"] / o["samples_per_sec"] for r, o in zip(rs, results["off"]))
        extra = statistics.median(r["wall_secs"] - o["wall_secs"] for r, o in zip(rs, results["off"]))
        sps = statistics.median(r["samples_per_sec"] for r in rs)
        wall = statistics.median(r["wall_secs"] for r in rs)
        print(f"| {mode} | {sps:,.0f} | {ratio:.3f}x | {wall:.2f} | {extra:+.2f} s |")
    out = {"reps": a.reps, "threads": a.threads, "log_every": 10, "runs": results,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (ROOT / "target/guard").mkdir(parents=True, exist_ok=True)
    (ROOT / "target/guard/tracking-cost.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
