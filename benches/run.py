#!/usr/bin/env python3
"""Training-step throughput of Kiln against PyTorch, measured in one run.

    bash benches/setup-torch.sh            # once: PyTorch into benches/.venv
    benches/.venv/bin/python benches/run.py [--reps 3] [--threads 2] [--models mlp,cnn,gpt]
    benches/.venv/bin/python benches/run.py --device cuda [--kiln-bin PATH] [--no-build]

CPU mode (default): builds `kiln-bench` (release; skipped with --no-build or --kiln-bin), then for
each selected model runs Kiln on flex and on ndarray, the bare burn loop (burn's own modules, loss
and AdamW, `--framework burn`) on both, and PyTorch, interleaved, `reps` times, and keeps the
median of each:
  mlp  784-256-256-10, batch 64;
  cnn  conv 1->32 3x3, conv 32->64 3x3, max-pool 2, linear 9216->128->10, batch 64;
  gpt  decoder-only transformer, vocab 65, 4 layers, 4 heads, 128 wide, block 64, batch 32
       sequences, f32 (the CPU config's model).
All with AdamW. Writes benches/results/cpu-training-step.{json,md}; when only some models are
rerun (--models), the other models' rows are kept from the existing JSON with their own dates.

GPU mode (--device cuda): on the one GPU, Kiln `--backend cuda` and PyTorch `--device cuda`, bf16
autocast / mixed precision, for
  gpt-gpu    vocab 65, 6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2
             (nanoGPT's shakespeare_char config);
  gpt2-124m  vocab 50304, 12 layers, 12 heads, 768 wide, block 1024, batch 8, dropout 0.
Reports tokens/s, MFU (nanoGPT's estimate: 6N + 12 L n_embd T FLOPs per token, N = parameters
without wpe, over --peak-flops) and peak GPU memory (the framework's own figure where it reports
`peak_mem_bytes`, and for both the peak of nvidia-smi's memory.used over the run minus the idle
baseline). Writes benches/results/gpu-training-step.{json,md} with the GPU's name.

Absolute numbers on a shared machine are noisy; the ratios from interleaved runs are the result.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"

# CPU models: extra flags passed identically to kiln-bench and torch_ref.py.
CPU_MODELS = {
    "mlp": {"label": "mlp", "batch": 64, "args": ["--model", "mlp"]},
    "cnn": {"label": "cnn", "batch": 64, "args": ["--model", "cnn"]},
    "gpt": {
        "label": "gpt", "batch": 32, "tokens_per_sample": 64,
        "args": ["--model", "gpt", "--vocab", "65", "--n-layer", "4", "--n-head", "4",
                 "--n-embd", "128", "--block", "64", "--dropout", "0.0", "--bias", "1",
                 "--tie", "1", "--precision", "f32", "--device", "cpu"],
    },
}
# "burn-flex"/"burn-ndarray": the bare burn loop (burn's modules, loss and AdamW) in kiln-bench.
CPU_RUNNERS = ["flex", "burn-flex", "ndarray", "burn-ndarray", "pytorch"]

# (warmup, timed steps) per model and runner: ndarray's convolution is ~100x slower than the
# others', so it gets fewer steps to keep the run short. gpt (batch 32 x 64 tokens, f32): PyTorch
# does ~7 steps/s on 1 thread (~0.13 CPU-s/step), ~10-14 expected on 2 idle cores, so 150 steps
# take ~10-20 s; ndarray may be 10-50x slower, so it gets 5.
STEPS = {
    ("mlp", "flex"): (20, 300), ("mlp", "ndarray"): (20, 300), ("mlp", "pytorch"): (20, 300),
    ("cnn", "flex"): (2, 20), ("cnn", "ndarray"): (2, 20), ("cnn", "pytorch"): (3, 30),
    ("gpt", "flex"): (3, 60), ("gpt", "ndarray"): (3, 30), ("gpt", "pytorch"): (3, 60),
    # The bare burn loop: ndarray's own convolution is ~15x slower than Kiln's lowered one.
    ("mlp", "burn-flex"): (20, 300), ("mlp", "burn-ndarray"): (20, 300),
    ("cnn", "burn-flex"): (2, 20), ("cnn", "burn-ndarray"): (1, 3),
    ("gpt", "burn-flex"): (3, 30), ("gpt", "burn-ndarray"): (1, 10),
}

GPU_MODELS = {
    "gpt-gpu": {
        "label": "gpt-gpu", "batch": 64, "tokens_per_sample": 256,
        "args": ["--model", "gpt", "--vocab", "65", "--n-layer", "6", "--n-head", "6",
                 "--n-embd", "384", "--block", "256", "--dropout", "0.2", "--bias", "1",
                 "--tie", "1", "--precision", "bf16", "--device", "cuda"],
    },
    "gpt2-124m": {
        "label": "gpt2-124m", "batch": 8, "tokens_per_sample": 1024,
        "args": ["--model", "gpt", "--vocab", "50304", "--n-layer", "12", "--n-head", "12",
                 "--n-embd", "768", "--block", "1024", "--dropout", "0.0", "--bias", "1",
                 "--tie", "1", "--precision", "bf16", "--device", "cuda"],
    },
    "llama-gpu": {
        "label": "llama-gpu", "batch": 64, "tokens_per_sample": 256,
        "args": ["--model", "gpt", "--vocab", "65", "--n-layer", "6", "--n-head", "6",
                 "--n-embd", "384", "--block", "256", "--dropout", "0.0", "--bias", "0",
                 "--tie", "1", "--precision", "bf16", "--device", "cuda",
                 "--style", "llama", "--n-kv-head", "2"],
    },
    "llama-124m": {
        "label": "llama-124m", "batch": 8, "tokens_per_sample": 1024,
        "args": ["--model", "gpt", "--vocab", "50304", "--n-layer", "12", "--n-head", "12",
                 "--n-embd", "768", "--block", "1024", "--dropout", "0.0", "--bias", "0",
                 "--tie", "1", "--precision", "bf16", "--device", "cuda",
                 "--style", "llama", "--n-kv-head", "4"],
    },
}
GPU_RUNNERS = ["cuda", "pytorch"]
GPU_STEPS = {
    ("gpt-gpu", "cuda"): (10, 100), ("gpt-gpu", "pytorch"): (10, 100),
    ("gpt2-124m", "cuda"): (5, 50), ("gpt2-124m", "pytorch"): (5, 50),
    ("llama-gpu", "cuda"): (10, 100), ("llama-gpu", "pytorch"): (10, 100),
    ("llama-124m", "cuda"): (5, 50), ("llama-124m", "pytorch"): (5, 50),
}

# Dense (no sparsity) bf16 tensor-core peaks, by a substring of the GPU name.
PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10", 125e12), ("L4", 121e12)]


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sh(cmd, env=None, timeout=None):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout).stdout


def try_sh(cmd):
    try:
        return sh(cmd).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


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
        # The GPU machine has no Rust toolchain.
        "rustc": try_sh(["rustc", "--version"]) or "rustc not available",
        "python": platform.python_version(),
    }


def gpu_info():
    out = try_sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                  "--format=csv,noheader"])
    if not out:
        return {"name": "unknown (nvidia-smi failed)"}
    name, mem, driver = [s.strip() for s in out.splitlines()[0].split(",")]
    return {"name": name, "memory_total": mem, "driver": driver}


def gpu_mem_used_mib():
    out = try_sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"])
    try:
        return int(out.splitlines()[0])
    except (AttributeError, IndexError, ValueError):
        return None


class GpuMemPoller:
    """Peak of nvidia-smi's memory.used on GPU 0 while a run is going, minus the idle baseline:
    the same external measure for both frameworks (context + allocator pools included)."""

    def __init__(self, interval=0.2):
        self.interval, self.peak, self.baseline = interval, None, gpu_mem_used_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            m = gpu_mem_used_mib()
            if m is not None:
                self.peak = m if self.peak is None else max(self.peak, m)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def delta_mib(self):
        if self.peak is None or self.baseline is None:
            return None
        return self.peak - self.baseline


def scaled(steps, scale):
    return max(1, round(steps * scale))


def run_one(spec, model, runner, steps_table, a):
    warmup, steps = steps_table[(model, runner)]
    steps = scaled(steps, a.steps_scale)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    args = spec["args"] + ["--batch", str(spec["batch"]), "--warmup", str(warmup), "--steps", str(steps)]
    if runner == "pytorch":
        cmd = [a.python, "benches/torch_ref.py", "--threads", str(a.threads)] + args
        if a.device == "cuda":
            cmd += ["--peak-flops", str(a.peak_flops)]
    elif runner.startswith("burn-"):
        cmd = [str(a.kiln_bin), "--backend", runner[5:], "--framework", "burn"] + args
    else:
        cmd = [str(a.kiln_bin), "--backend", runner] + args
    t0 = time.perf_counter()
    poll = GpuMemPoller() if a.device == "cuda" else None
    try:
        if poll is not None:
            with poll:
                out = sh(cmd, env, timeout=a.timeout)
        else:
            out = sh(cmd, env, timeout=a.timeout)
        r = json.loads(out.strip().splitlines()[-1])
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or "").strip().splitlines()[-5:]
        r = {"error": f"exit {e.returncode}: " + " | ".join(tail), "cmd": " ".join(cmd)}
    except subprocess.TimeoutExpired:
        r = {"error": f"timed out after {a.timeout} s", "cmd": " ".join(cmd)}
    except (OSError, ValueError, IndexError) as e:
        r = {"error": f"{type(e).__name__}: {e}", "cmd": " ".join(cmd)}
    r["wall_secs"] = time.perf_counter() - t0
    if "tokens_per_sample" in spec and "steps_per_sec" in r and "tokens_per_sec" not in r:
        r["tokens_per_sec"] = r["steps_per_sec"] * spec["batch"] * spec["tokens_per_sample"]
    if poll is not None and "error" not in r:
        r["nvidia_smi_peak_mib"] = poll.delta_mib()
    return r


def median_of(rs, key):
    vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def flops_per_token(args):
    """nanoGPT's estimate_mfu numerator per token: 6N + 12 L n_embd T, N = params without wpe
    (tied head counted once). Computed here from the shape so both frameworks use the same."""
    f = dict(zip(args[::2], args[1::2]))
    v, l, e, t = int(f["--vocab"]), int(f["--n-layer"]), int(f["--n-embd"]), int(f["--block"])
    bias, tie = f["--bias"] == "1", f["--tie"] == "1"
    if f.get("--style") == "llama":
        # RMSNorm (gamma only), fused q|k|v with n_kv_head key/value heads, SwiGLU of Kiln's
        # default width, no biases, no wpe.
        kv = int(f["--n-kv-head"]) * e // int(f["--n-head"])
        hidden = -(-(8 * e // 3) // 32) * 32
        block = 2 * e + e * (e + 2 * kv) + e * e + e * 2 * hidden + hidden * e
        n = v * e + l * block + e + (0 if tie else e * v)
        return 6 * n + 12 * l * e * t, n
    ln = (2 if bias else 1) * e
    block = 2 * ln + (e * 3 * e) + (e * e) + (e * 4 * e) + (4 * e * e)
    if bias:
        block += 3 * e + e + 4 * e + e
    n = v * e + l * block + ln + (0 if tie else e * v)  # + wpe (t * e), excluded for MFU
    return 6 * n + 12 * l * e * t, n + t * e


def measure(models, specs, runners, steps_table, a):
    runs = {}
    for model in models:
        for rep in range(a.reps):
            for runner in runners:
                r = run_one(specs[model], model, runner, steps_table, a)
                runs.setdefault((model, runner), []).append(r)
                if "error" in r:
                    print(f"{model:9} {runner:8} rep {rep}: ERROR {r['error']}", file=sys.stderr)
                else:
                    tok = f", {r['tokens_per_sec']:.0f} tokens/s" if "tokens_per_sec" in r else ""
                    print(f"{model:9} {runner:8} rep {rep}: {r['steps_per_sec']:.2f} steps/s{tok}",
                          file=sys.stderr)
    return runs


def fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def pct(v):
    return "—" if v is None else f"{100 * v:.1f}%"


def fmt_ratio(k, p):
    return "—" if k is None or not p else f"{k / p:.3f}x"


def build(a, features=None):
    if a.no_build or a.kiln_bin_given:
        return
    cmd = ["cargo", "build", "--release", "-p", "kiln-benches"]
    if features:
        cmd += ["--features", features]
    subprocess.run(cmd, check=True, cwd=ROOT)


# ----------------------------------------------------------------------------- CPU


def cpu_main(a):
    models = a.models
    build(a)
    runs = measure(models, CPU_MODELS, CPU_RUNNERS, STEPS, a)
    date, mach = now(), machine()
    torch_version = next((r["torch_version"] for m in models for r in runs[(m, "pytorch")]
                          if "torch_version" in r), "?")
    rows = []
    for model in models:
        spec = CPU_MODELS[model]
        ref = runs[(model, "pytorch")]
        ref_sps, ref_tps = median_of(ref, "steps_per_sec"), median_of(ref, "tokens_per_sec")
        for runner in ["flex", "ndarray"]:
            ks = runs[(model, runner)]
            sps, tps = median_of(ks, "steps_per_sec"), median_of(ks, "tokens_per_sec")
            bare = runs.get((model, "burn-" + runner), [])
            burn_sps = median_of(bare, "steps_per_sec")
            row = {"model": model, "backend": runner, "batch": spec["batch"], "date": date,
                   "cpu": mach["cpu"], "cores": mach["cores"],
                   "threads": a.threads, "reps": a.reps, "torch_version": torch_version,
                   "kiln_steps_per_sec": sps, "pytorch_steps_per_sec": ref_sps,
                   "ratio_kiln_over_pytorch": sps / ref_sps if sps and ref_sps else None,
                   "burn_steps_per_sec": burn_sps,
                   "ratio_kiln_over_burn": sps / burn_sps if sps and burn_sps else None,
                   "kiln_cpu_per_wall": median_of(ks, "cpu_per_wall"),
                   "burn_all": [r.get("steps_per_sec") for r in bare],
                   "kiln_all": [r.get("steps_per_sec") for r in ks],
                   "pytorch_all": [r.get("steps_per_sec") for r in ref]}
            if "tokens_per_sample" in spec:
                row.update({"block": spec["tokens_per_sample"], "kiln_tokens_per_sec": tps,
                            "pytorch_tokens_per_sec": ref_tps,
                            "params": next((r["params"] for r in ref if "params" in r), None),
                            "kiln_params": next((r["params"] for r in ks if "params" in r), None)})
            errors = [r["error"] for r in ks + ref + bare if "error" in r]
            if errors:
                row["errors"] = sorted(set(errors))
            rows.append(row)

    path = RESULTS / "cpu-training-step.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    kept = []
    for r in old.get("results", []):
        if r.get("model") not in models:
            r = dict(r)
            # Rows from before per-row metadata inherit the old file's run settings.
            for k in ["date", "threads", "reps", "torch_version"]:
                r.setdefault(k, old.get(k))
            for k in ["cpu", "cores"]:
                r.setdefault(k, old.get("machine", {}).get(k))
            r.setdefault("batch", old.get("batch", 64))
            kept.append(r)
    order = {m: i for i, m in enumerate(CPU_MODELS)}
    all_rows = sorted(kept + rows, key=lambda r: (order.get(r["model"], 99), r["backend"] != "flex"))
    steps = dict(old.get("steps", {}))
    steps.update({f"{m}/{r}": [w, scaled(s, a.steps_scale)]
                  for (m, r), (w, s) in STEPS.items() if m in models})
    result = {
        "benchmark": "CPU training step (forward, cross-entropy, backward, AdamW); "
                     "mlp/cnn batch 64, gpt batch 32 x 64 tokens",
        "date": date, "machine": mach, "threads": a.threads, "reps": a.reps,
        "torch_version": torch_version, "models_in_last_run": models,
        "steps": steps, "results": all_rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# CPU training-step throughput: Kiln vs PyTorch",
        "",
        "Training step: forward, cross-entropy, backward, AdamW. mlp 784-256-256-10 and cnn "
        "(conv 1->32, conv 32->64, max-pool, 9216->128->10) at batch 64; gpt (vocab 65, 4 layers, "
        "4 heads, 128 wide, block 64, f32) at batch 32 sequences (2048 tokens).",
        f"Each row: median of its run's interleaved reps, same thread count for both. Last run "
        f"{date} ({', '.join(models)}), {a.threads} threads, {a.reps} reps.",
        f"Last run's machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; {m['rustc']}; PyTorch {torch_version}.",
        "",
        "Bare burn: the same models with burn's own modules, loss and AdamW, in the same binary "
        "(`burn_loop.rs`). Kiln CPU/wall: the process's CPU time over the wall time of the timed "
        "steps (how many of the threads' cores the step keeps busy).",
        "",
        "| model | batch | Kiln backend | Kiln steps/s | PyTorch steps/s | bare burn steps/s | Kiln tokens/s | PyTorch tokens/s | Kiln / PyTorch | Kiln / bare burn | Kiln CPU/wall | threads | measured on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in all_rows:
        lines.append(
            f"| {r['model']} | {r.get('batch', '')} | {r['backend']} | {fmt(r['kiln_steps_per_sec'])} | "
            f"{fmt(r['pytorch_steps_per_sec'])} | {fmt(r.get('burn_steps_per_sec'))} | "
            f"{fmt(r.get('kiln_tokens_per_sec'), ',.0f')} | "
            f"{fmt(r.get('pytorch_tokens_per_sec'), ',.0f')} | "
            f"{fmt_ratio(r['kiln_steps_per_sec'], r['pytorch_steps_per_sec'])} | "
            f"{fmt_ratio(r['kiln_steps_per_sec'], r.get('burn_steps_per_sec'))} | "
            f"{fmt(r.get('kiln_cpu_per_wall'))} | {r.get('threads', '')} | {str(r.get('date', ''))[:10]}, {r.get('cpu', '?')} |")
    errs = [f"- {r['model']}/{r['backend']}: {e}" for r in all_rows for e in r.get("errors", [])]
    if errs:
        lines += ["", "Errors:", ""] + errs
    lines.append("")
    (RESULTS / "cpu-training-step.md").write_text("\n".join(lines))
    print("\n".join(lines))


# ----------------------------------------------------------------------------- GPU


def gpu_main(a):
    gpu = gpu_info()
    if a.peak_flops is None:
        a.peak_flops = next((p for k, p in PEAK_BF16 if k in gpu["name"]), None)
        if a.peak_flops is None:
            a.peak_flops = 989e12
            print(f"run.py: unknown peak for GPU {gpu['name']!r}; MFU uses 989e12 (H100 bf16 "
                  "dense). Pass --peak-flops.", file=sys.stderr)
    build(a, features="cuda")
    models = a.models
    runs = measure(models, GPU_MODELS, GPU_RUNNERS, GPU_STEPS, a)
    date = now()
    torch_version = next((r["torch_version"] for m in models for r in runs[(m, "pytorch")]
                          if "torch_version" in r), "?")
    rows = []
    for model in models:
        spec = GPU_MODELS[model]
        fpt, params = flops_per_token(spec["args"])
        row = {"model": model, "config": spec["args"][2:], "batch": spec["batch"],
               "block": spec["tokens_per_sample"], "precision": "bf16", "params": params,
               "flops_per_token": fpt, "peak_flops": a.peak_flops, "date": date}
        for runner, side in [("cuda", "kiln"), ("pytorch", "pytorch")]:
            rs = runs[(model, runner)]
            tps = median_of(rs, "tokens_per_sec")
            mem = median_of(rs, "peak_mem_bytes")
            smi = median_of(rs, "nvidia_smi_peak_mib")
            row.update({
                f"{side}_steps_per_sec": median_of(rs, "steps_per_sec"),
                f"{side}_tokens_per_sec": tps,
                f"{side}_mfu": tps * fpt / a.peak_flops if tps else None,
                f"{side}_peak_mem_bytes": int(mem) if mem is not None else None,
                f"{side}_nvidia_smi_peak_mib": smi,
                f"{side}_params": next((r["params"] for r in rs if "params" in r), None),
                f"{side}_all": [r.get("tokens_per_sec") for r in rs],
            })
            errors = [r["error"] for r in rs if "error" in r]
            if errors:
                row[f"{side}_errors"] = sorted(set(errors))
        k, p = row["kiln_tokens_per_sec"], row["pytorch_tokens_per_sec"]
        row["ratio_kiln_over_pytorch"] = k / p if k and p else None
        rows.append(row)

    path = RESULTS / "gpu-training-step.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    kept = [r for r in old.get("results", []) if r.get("model") not in models]
    order = {m: i for i, m in enumerate(GPU_MODELS)}
    all_rows = sorted(kept + rows, key=lambda r: order.get(r["model"], 99))
    result = {
        "benchmark": "GPU training step (forward, cross-entropy, backward, AdamW), bf16 mixed "
                     "precision, one GPU",
        "date": date, "gpu": gpu, "machine": machine(), "reps": a.reps,
        "torch_version": torch_version, "kiln_bin": str(a.kiln_bin),
        "models_in_last_run": models,
        "mfu_formula": "tokens/s * (6 N + 12 n_layer n_embd block) / peak_flops, N = params "
                       "without wpe (nanoGPT estimate_mfu)",
        "steps": {f"{m}/{r}": [w, scaled(s, a.steps_scale)] for (m, r), (w, s) in GPU_STEPS.items()
                  if m in models},
        "results": all_rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

    def mib(b):
        return None if b is None else b / 2**20

    lines = [
        "# GPU training-step throughput: Kiln (cuda) vs PyTorch",
        "",
        f"{result['benchmark']}. GPU: {gpu['name']} ({gpu.get('memory_total', '?')}, driver "
        f"{gpu.get('driver', '?')}); PyTorch {torch_version}; median of {a.reps} interleaved runs; {date}.",
        "gpt-gpu: vocab 65, 6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2 "
        "(nanoGPT shakespeare_char). gpt2-124m: vocab 50304, 12 layers, 12 heads, 768 wide, "
        "block 1024, batch 8, dropout 0, tied head. llama-gpu / llama-124m: the same sizes in "
        "Llama's style (RMSNorm, RoPE, SwiGLU of width 8d/3 rounded to 32, no biases, dropout 0) "
        "with 2 / 4 key-value heads (grouped-query attention).",
        f"MFU = tokens/s x (6N + 12 L d T) / {a.peak_flops / 1e12:.0f} TFLOP/s (bf16 dense peak). "
        "Memory: the framework's own peak allocation (PyTorch: max_memory_allocated) and the peak "
        "of nvidia-smi memory.used over the run minus idle (both frameworks, incl. context and pools).",
        "",
        "| model | params | Kiln tokens/s | PyTorch tokens/s | Kiln / PyTorch | Kiln MFU | PyTorch MFU | Kiln peak MiB (own / smi) | PyTorch peak MiB (own / smi) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in all_rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {fmt(r['kiln_tokens_per_sec'], ',.0f')} | "
            f"{fmt(r['pytorch_tokens_per_sec'], ',.0f')} | "
            f"{fmt_ratio(r['kiln_tokens_per_sec'], r['pytorch_tokens_per_sec'])} | "
            f"{pct(r['kiln_mfu'])} | {pct(r['pytorch_mfu'])} | "
            f"{fmt(mib(r['kiln_peak_mem_bytes']), ',.0f')} / {fmt(r['kiln_nvidia_smi_peak_mib'], ',.0f')} | "
            f"{fmt(mib(r['pytorch_peak_mem_bytes']), ',.0f')} / {fmt(r['pytorch_nvidia_smi_peak_mib'], ',.0f')} |")
    errs = [f"- {r['model']}/{side}: {e}" for r in all_rows for side in ["kiln", "pytorch"]
            for e in r.get(f"{side}_errors", [])]
    if errs:
        lines += ["", "Errors:", ""] + errs
    lines.append("")
    (RESULTS / "gpu-training-step.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main():
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--models", default=None,
                   help="comma-separated; cpu: mlp,cnn,gpt (default all); cuda: gpt-gpu,gpt2-124m (default both)")
    p.add_argument("--batch", type=int, default=None,
                   help="override the batch of every selected model (default: per model)")
    p.add_argument("--kiln-bin", default=None,
                   help="kiln-bench binary (default target/release/kiln-bench); implies --no-build")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument("--python", default=sys.executable, help="python with torch for torch_ref.py")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="cuda: peak FLOP/s for MFU (default: bf16 dense peak looked up by GPU name, H100/H200 989e12)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every timed step count")
    p.add_argument("--timeout", type=float, default=600, help="seconds per single run")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default benches/results)")
    a = p.parse_args()
    RESULTS = Path(a.out).resolve()

    specs = GPU_MODELS if a.device == "cuda" else CPU_MODELS
    a.models = a.models.split(",") if a.models else list(specs)
    bad = [m for m in a.models if m not in specs]
    if bad:
        p.error(f"--models {','.join(bad)}: {a.device} models are {','.join(specs)}")
    if a.batch is not None:
        for m in a.models:
            specs[m]["batch"] = a.batch
    a.kiln_bin_given = a.kiln_bin is not None
    a.kiln_bin = Path(a.kiln_bin).resolve() if a.kiln_bin else ROOT / "target/release/kiln-bench"
    if a.device == "cuda" and not shutil.which("nvidia-smi"):
        print("run.py: nvidia-smi not found; GPU name and nvidia-smi memory will be missing", file=sys.stderr)
    (gpu_main if a.device == "cuda" else cpu_main)(a)


if __name__ == "__main__":
    main()
