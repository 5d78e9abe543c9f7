#!/usr/bin/env python3
"""Size, accuracy and inference latency of Kiln's exports (float32, int8, int4), with
onnxruntime as the reference runtime for the ONNX classifier exports.

    python3 benches/run_export.py [--reps 3] [--threads 2] [--models mlp,cnn,gpt]
                                  [--python target/pyenv/bin/python] [--no-build]

Needs the trained checkpoints checkpoints/fashion-mnist-{mlp,cnn} and
checkpoints/shakespeare-char-gpt (git-ignored; `kiln train` with the shipped configs makes them)
and a Python with onnxruntime and numpy for the ONNX timings (default target/pyenv/bin/python,
made by tests/python/setup.sh); this script itself runs with any Python 3.

For each model and each of --quantize none/int8/int4 it runs `kiln export` into a temporary folder
(format kiln for all; also onnx for the classifiers, and hf float32 for the GPT's size only) and
keeps the summary: weights file size, metrics Kiln measured on the exported (dequantized) model
(test accuracy for the classifiers, validation loss for the GPT). It adds int4 exports with
--calibration-samples 0 (plain max-abs scales) to show what the default calibration (256 samples)
buys.

Latency, per batch, interleaved: each rep runs, for every model and scheme, `kiln-export-bench`
on the Kiln export (flex backend) and, for classifiers, onnxruntime on the ONNX export (this file
with --ort-worker under --python: CPUExecutionProvider, intra-op threads = --threads). Both time
--repeats passes after 3 warm-up passes on the same fixed batch (the first 256 Fashion-MNIST test
images; the GPT: 16 windows of 64 tokens from the start of shakespeare.txt) and report the median;
the table shows the median over reps of those medians. Kiln gets the same thread count through
RAYON_NUM_THREADS. onnxruntime's test accuracy on all 10,000 test images is measured once per
ONNX export as an independent check of the exported graph.

Writes benches/results/export.{json,md}.
"""
import argparse
import datetime
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
IMAGES = ROOT / "datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
LABELS = ROOT / "datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"

MODELS = {
    "mlp": {"run": "checkpoints/fashion-mnist-mlp", "kind": "classifier", "batch": 256,
            "formats": ["kiln", "onnx"], "repeats": 30,
            "about": "MLP 784-256-256-10 (Fashion-MNIST)"},
    "cnn": {"run": "checkpoints/fashion-mnist-cnn", "kind": "classifier", "batch": 256,
            "formats": ["kiln", "onnx"], "repeats": 20,
            "about": "CNN conv 1->16, conv 32 (3x3, pad 1, max-pool after each), head 128 "
                     "(Fashion-MNIST)"},
    "gpt": {"run": "checkpoints/shakespeare-char-gpt", "kind": "gpt", "batch": 16,
            "formats": ["kiln"], "repeats": 20,
            "about": "char GPT, 4 layers x 4 heads x 128 wide, context 64, vocabulary 65 "
                     "(Shakespeare)"},
}
SCHEMES = ["none", "int8", "int4"]
# Targets: size vs the float32 export of the same format, and accuracy change in points.
TARGETS = {"int8": (0.27, 0.5), "int4": (0.16, 2.0)}


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sh(cmd, env=None, timeout=600):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout).stdout


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def git_commit():
    """HEAD's commit, read from .git without running git (the working tree may differ)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        pass
    return None


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                      if l.startswith("MemTotal")).split()[1])
    try:
        rustc = sh(["rustc", "--version"]).strip()
    except (OSError, subprocess.CalledProcessError):
        rustc = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "os": platform.platform(), "rustc": rustc, "python": platform.python_version(),
            "kiln_commit": git_commit()}


# ----------------------------------------------------------------------------- onnxruntime worker


def read_idx(path):
    import numpy as np
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def ort_worker(a):
    """Times onnxruntime on one ONNX export; prints one JSON line."""
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1e3
    name = sess.get_inputs()[0].name
    images = read_idx(IMAGES).reshape(-1, 784).astype(np.float32) / 255.0
    x = np.ascontiguousarray(images[:a.batch])
    for _ in range(a.warmup):
        sess.run(None, {name: x})
    ms = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        ms.append((time.perf_counter() - t) * 1e3)
    out = {"framework": "onnxruntime", "onnxruntime_version": ort.__version__,
           "onnx": a.onnx, "batch": a.batch, "threads": a.threads, "warmup": a.warmup,
           "repeats": a.repeats, "median_ms": statistics.median(ms), "min_ms": min(ms),
           "all_ms": ms, "load_ms": load_ms,
           "nodes": None}
    try:
        import onnx
        out["nodes"] = sorted({n.op_type for n in onnx.load(a.onnx).graph.node})
    except ImportError:
        pass
    if a.accuracy:
        labels = read_idx(LABELS).astype(np.int64)
        correct = 0
        for i in range(0, len(images), 1000):
            logits = sess.run(["logits"], {name: np.ascontiguousarray(images[i:i + 1000])})[0]
            correct += int((logits.argmax(1) == labels[i:i + 1000]).sum())
        out["accuracy"] = correct / len(images)
        out["accuracy_samples"] = len(images)
    print(json.dumps(out))


# ----------------------------------------------------------------------------- driver


def export(a, model, fmt, scheme, tmp, calibration=None):
    spec = MODELS[model]
    name = f"{model}-{fmt}-{scheme}" + ("" if calibration is None else f"-cal{calibration}")
    out = Path(tmp) / name
    cmd = [str(a.kiln), "export", spec["run"], "--format", fmt, "--quantize", scheme,
           "--out", str(out), "--overwrite", "--backend", "flex"]
    if calibration is not None:
        cmd += ["--calibration-samples", str(calibration)]
    t0 = time.perf_counter()
    summary = last_json(sh(cmd, env=thread_env(a)))
    summary["export_secs"] = time.perf_counter() - t0
    summary["calibration_samples"] = 256 if calibration is None else calibration
    print(f"export {name:22} {summary['weights_bytes']:>9} B  {summary['metrics']}",
          file=sys.stderr)
    return name, out, summary


def thread_env(a):
    return dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))


def time_kiln(a, model, path):
    spec = MODELS[model]
    cmd = [str(a.bench), "--export", str(path), "--batch", str(spec["batch"]),
           "--repeats", str(spec["repeats"]), "--warmup", "3", "--backend", "flex",
           "--threads", str(a.threads)]
    return run_timed(cmd, a)


def time_ort(a, model, path, accuracy=False):
    spec = MODELS[model]
    cmd = [a.python, str(Path(__file__).resolve()), "--ort-worker", "--onnx",
           str(path / "model.onnx"), "--batch", str(spec["batch"]),
           "--repeats", str(spec["repeats"]), "--warmup", "3", "--threads", str(a.threads)]
    if accuracy:
        cmd.append("--accuracy")
    return run_timed(cmd, a)


def run_timed(cmd, a):
    try:
        return last_json(sh(cmd, env=thread_env(a)))
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or "").strip().splitlines()[-5:]
        return {"error": f"exit {e.returncode}: " + " | ".join(tail), "cmd": " ".join(cmd)}
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError) as e:
        return {"error": f"{type(e).__name__}: {e}", "cmd": " ".join(cmd)}


def med(rs, key="median_ms"):
    vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--python", default=str(ROOT / "target/pyenv/bin/python"),
                   help="a Python with onnxruntime and numpy")
    p.add_argument("--kiln", default=str(ROOT / "target/release/kiln"))
    p.add_argument("--bench", default=str(ROOT / "target/release/kiln-export-bench"))
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument("--keep-exports", default=None, help="write the exports here and keep them")
    p.add_argument("--out", default=str(RESULTS))
    # The onnxruntime worker (run under --python by the driver).
    p.add_argument("--ort-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=30, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--accuracy", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ort_worker:
        return ort_worker(a)

    models = a.models.split(",")
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"--models {','.join(bad)}: choose from {','.join(MODELS)}")
    a.kiln, a.bench = Path(a.kiln), Path(a.bench)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "kiln-benches",
                        "--features", "export-bench", "--bin", "kiln-export-bench"],
                       check=True, cwd=ROOT)
        if not a.kiln.exists():
            subprocess.run(["cargo", "build", "--release", "-p", "kiln-cli"], check=True,
                           cwd=ROOT)
    t_start = time.perf_counter()
    tmp = a.keep_exports or tempfile.mkdtemp(prefix="kiln-export-bench-")
    Path(tmp).mkdir(parents=True, exist_ok=True)
    try:
        result = measure(a, models, tmp)
    finally:
        if not a.keep_exports:
            shutil.rmtree(tmp, ignore_errors=True)
    result["wall_secs"] = time.perf_counter() - t_start
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "export.md").write_text(md)
    print(md)


def measure(a, models, tmp):
    exports = {}  # name -> (model, fmt, scheme, path, summary)
    for model in models:
        spec = MODELS[model]
        for fmt_ in spec["formats"]:
            for scheme in SCHEMES:
                name, path, s = export(a, model, fmt_, scheme, tmp)
                exports[name] = (model, fmt_, scheme, path, s)
        name, path, s = export(a, model, "kiln", "int4", tmp, calibration=0)
        exports[name] = (model, "kiln", "int4-cal0", path, s)
        if spec["kind"] == "gpt":
            name, path, s = export(a, model, "hf", "none", tmp)
            exports[name] = (model, "hf", "none", path, s)

    # onnxruntime's own test accuracy, once per ONNX export.
    ort_acc = {}
    for name, (model, fmt_, scheme, path, _) in exports.items():
        if fmt_ == "onnx":
            r = time_ort(a, model, path, accuracy=True)
            ort_acc[name] = r
            print(f"onnxruntime {name:22} accuracy {r.get('accuracy')} {r.get('error', '')}",
                  file=sys.stderr)

    # Latency, interleaved over reps.
    load_before = loadavg()
    timings = {}
    for rep in range(a.reps):
        for model in models:
            for scheme in SCHEMES:
                for fmt_, runner in [("kiln", time_kiln), ("onnx", time_ort)]:
                    name = f"{model}-{fmt_}-{scheme}"
                    if name not in exports:
                        continue
                    r = runner(a, model, exports[name][3])
                    timings.setdefault(name, []).append(r)
                    what = "kiln" if fmt_ == "kiln" else "onnxruntime"
                    msg = r.get("error") or f"{r['median_ms']:.2f} ms (min {r['min_ms']:.2f})"
                    print(f"rep {rep} {model} {scheme:5} {what:11} {msg}", file=sys.stderr)

    ort_version = next((r["onnxruntime_version"] for r in ort_acc.values()
                        if "onnxruntime_version" in r), None)
    rows = []
    for name, (model, fmt_, scheme, path, s) in exports.items():
        ref = exports.get(f"{model}-{fmt_}-none", exports.get(f"{model}-kiln-none"))[4]
        metric = "accuracy" if MODELS[model]["kind"] == "classifier" else "loss"
        row = {
            "name": name, "model": model, "format": fmt_, "scheme": scheme,
            "calibration_samples": s["calibration_samples"] if scheme != "none" else None,
            "files": s["files"], "weights_bytes": s["weights_bytes"],
            "source_bytes": s["source_bytes"], "size_ratio_vs_checkpoint": s["size_ratio"],
            "size_ratio_vs_fp32_export": s["weights_bytes"] / ref["weights_bytes"],
            "metrics": s["metrics"], "float_metrics": s["float_metrics"],
            "metric": metric, "value": s["metrics"][metric],
            "fp32_value": ref["metrics"][metric],
            "delta_vs_fp32": s["metrics"][metric] - ref["metrics"][metric],
            "export_secs": s["export_secs"],
        }
        if fmt_ == "onnx":
            row["onnxruntime_accuracy"] = ort_acc[name].get("accuracy")
            row["onnxruntime_nodes"] = ort_acc[name].get("nodes")
        rs = timings.get(name)
        if rs:
            key = "kiln" if fmt_ == "kiln" else "onnxruntime"
            row[f"{key}_batch"] = MODELS[model]["batch"]
            row[f"{key}_median_ms"] = med(rs)
            mins = [r["min_ms"] for r in rs if "min_ms" in r]
            row[f"{key}_min_ms"] = min(mins) if mins else None
            row[f"{key}_rep_medians_ms"] = [r.get("median_ms") for r in rs]
            row[f"{key}_runs"] = rs
            if "tokens_per_batch" in rs[0]:
                row["tokens_per_batch"] = rs[0]["tokens_per_batch"]
            errors = sorted({r["error"] for r in rs if "error" in r})
            if errors:
                row["errors"] = errors
        rows.append(row)
    return {
        "benchmark": "exports: weights size, accuracy measured by Kiln on the exported "
                     "(dequantized) model, and per-batch inference latency (Kiln flex on Kiln "
                     "exports, onnxruntime CPUExecutionProvider on ONNX exports)",
        "date": now(), "machine": machine(), "threads": a.threads, "reps": a.reps,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "onnxruntime_version": ort_version,
        "kiln_binary": str(a.kiln),
        "kiln_binary_mtime": datetime.datetime.fromtimestamp(
            a.kiln.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds"),
        "models": {m: MODELS[m] for m in models},
        "targets": {k: {"max_size_ratio": v[0], "max_accuracy_drop_points": v[1]}
                    for k, v in TARGETS.items()},
        "results": rows,
    }


def ms_cell(row, key):
    if not row or row.get(f"{key}_median_ms") is None:
        return "—"
    return f"{row[f'{key}_median_ms']:.2f} ({row[f'{key}_min_ms']:.2f})"


def loadavg():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def markdown(result):
    m = result["machine"]
    rows = result["results"]
    by = {r["name"]: r for r in rows}
    lines = [
        "# Exports: size, accuracy and inference latency",
        "",
        f"{result['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"{m['os']}; {m['rustc']}; onnxruntime {result['onnxruntime_version']}; Kiln commit "
        f"{(m['kiln_commit'] or '?')[:12]} (HEAD when run). Both runtimes on {result['threads']} "
        f"threads; latency: median of {result['reps']} interleaved runs' medians (each run: 3 "
        "warm-up passes, then timed passes), and in brackets the fastest single pass of all "
        "runs; ms per batch, host input to host output. Load average (1/5/15 min) before and "
        f"after the latency runs: {' '.join(result['loadavg_before'] or [])} / "
        f"{' '.join(result['loadavg_after'] or [])} (the machine is shared; other work "
        "makes medians noisy, minima less so).",
        "",
        "Sizes are of the weights file (`model.safetensors`, `model.onnx`), KiB = 1024 bytes; "
        "\"vs fp32\" divides by the float32 export of the same format. Accuracy and loss are "
        "Kiln's measurement on the exported model (quantized weights dequantized); the ONNX "
        "column is onnxruntime's own test accuracy on the ONNX export. int4 uses blocks of 64; "
        "int4 calibrates on 256 training samples unless the row says otherwise (int8 uses max-abs scales).",
        "",
    ]
    verdicts = []
    for model, spec in result["models"].items():
        lines += [f"## {model}: {spec['about']}", ""]
        if spec["kind"] == "classifier":
            lines += [
                f"Batch {spec['batch']} test images. Test accuracy on all 10,000 test images.",
                "",
                "| scheme | Kiln file (KiB) | vs fp32 | ONNX file (KiB) | vs fp32 | test accuracy "
                "| Δ vs fp32 (points) | onnxruntime accuracy | Kiln ms/batch (min) | "
                "onnxruntime ms/batch (min) |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for scheme in SCHEMES + ["int4-cal0"]:
                k = by.get(f"{model}-kiln-{scheme}" if scheme != "int4-cal0"
                           else f"{model}-kiln-int4-cal0")
                o = by.get(f"{model}-onnx-{scheme}")
                if k is None:
                    continue
                label = {"none": "fp32", "int4-cal0": "int4, no calibration (max-abs)"}.get(
                    scheme, scheme)
                lines.append(
                    f"| {label} | {k['weights_bytes'] / 1024:.1f} | "
                    f"{k['size_ratio_vs_fp32_export']:.3f}x | "
                    f"{fmt(o and o['weights_bytes'] / 1024, '.1f')} | "
                    f"{fmt(o and o['size_ratio_vs_fp32_export'], '.3f')}{'x' if o else ''} | "
                    f"{100 * k['value']:.2f}% | {100 * k['delta_vs_fp32']:+.2f} | "
                    f"{fmt(o and o.get('onnxruntime_accuracy') and 100 * o['onnxruntime_accuracy'], '.2f')}{'%' if o else ''} | "
                    f"{ms_cell(k, 'kiln')} | {ms_cell(o, 'onnxruntime')} |")
            for scheme, (max_ratio, max_drop) in TARGETS.items():
                k, o = by.get(f"{model}-kiln-{scheme}"), by.get(f"{model}-onnx-{scheme}")
                if k is None:
                    continue
                ratios = [k["size_ratio_vs_fp32_export"]] + ([o["size_ratio_vs_fp32_export"]]
                                                              if o else [])
                drop = -100 * k["delta_vs_fp32"]
                size_ok = all(r <= max_ratio for r in ratios)
                acc_ok = abs(100 * k["delta_vs_fp32"]) <= max_drop
                verdicts.append(
                    f"- {model} {scheme}: size {' / '.join(f'{r:.3f}x' for r in ratios)} "
                    f"(target <= {max_ratio}x) **{'pass' if size_ok else 'FAIL'}**; accuracy "
                    f"{100 * k['value']:.2f}% vs {100 * k['fp32_value']:.2f}%, "
                    f"{'drop' if drop >= 0 else 'gain'} {abs(drop):.2f} points (target within "
                    f"{max_drop}) **{'pass' if acc_ok else 'FAIL'}**")
        else:
            hf = by.get(f"{model}-hf-none")
            lines += [
                f"Batch {spec['batch']} windows of 64 tokens ({spec['batch'] * 64} tokens) from "
                "the start of shakespeare.txt. Validation loss and next-token accuracy on the "
                f"validation split ({by[f'{model}-kiln-none']['metrics']['samples']:,} tokens).",
                "",
                "| scheme | Kiln file (KiB) | vs fp32 | valid loss | Δ vs fp32 | valid token "
                "accuracy | Δ vs fp32 (points) | Kiln ms/batch (min) | Kiln tokens/s |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for scheme in SCHEMES + ["int4-cal0"]:
                k = by.get(f"{model}-kiln-{scheme}")
                if k is None:
                    continue
                label = {"none": "fp32", "int4-cal0": "int4, no calibration (max-abs)"}.get(
                    scheme, scheme)
                ms = k.get("kiln_median_ms")
                acc, acc0 = k["metrics"]["accuracy"], by[f"{model}-kiln-none"]["metrics"][
                    "accuracy"]
                lines.append(
                    f"| {label} | {k['weights_bytes'] / 1024:.1f} | "
                    f"{k['size_ratio_vs_fp32_export']:.3f}x | {k['value']:.4f} | "
                    f"{k['delta_vs_fp32']:+.4f} | {100 * acc:.2f}% | {100 * (acc - acc0):+.2f} | "
                    f"{ms_cell(k, 'kiln')} | "
                    f"{fmt(ms and k.get('tokens_per_batch', 0) / ms * 1e3, ',.0f')} |")
            if hf:
                lines.append(f"| fp32, Hugging Face folder (size only) | "
                             f"{hf['weights_bytes'] / 1024:.1f} | "
                             f"{hf['weights_bytes'] / by[f'{model}-kiln-none']['weights_bytes']:.3f}x"
                             f" | {hf['value']:.4f} | — | — | — | — | — |")
            for scheme, (max_ratio, _) in TARGETS.items():
                k = by.get(f"{model}-kiln-{scheme}")
                if k is None:
                    continue
                r = k["size_ratio_vs_fp32_export"]
                rel = 100 * k["delta_vs_fp32"] / k["fp32_value"]
                acc = 100 * (k["metrics"]["accuracy"]
                             - by[f"{model}-kiln-none"]["metrics"]["accuracy"])
                verdicts.append(
                    f"- {model} {scheme}: size {r:.3f}x (target <= {max_ratio}x) "
                    f"**{'pass' if r <= max_ratio else 'FAIL'}**; valid loss "
                    f"{k['value']:.4f} vs {k['fp32_value']:.4f} ({k['delta_vs_fp32']:+.4f}, "
                    f"{rel:+.1f}%), token accuracy {acc:+.2f} points (no accuracy target for a "
                    "language model)")
        lines.append("")
    lines += ["## Targets", "",
              "int8: <= 0.27x the float32 size, test accuracy within 0.5 points; int4: <= 0.16x, "
              "within 2 points (sizes of both formats where there are two).", ""]
    lines += verdicts
    errs = [f"- {r['name']}: {e}" for r in rows for e in r.get("errors", [])]
    if errs:
        lines += ["", "Errors:", ""] + errs
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
