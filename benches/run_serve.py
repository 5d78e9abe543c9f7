#!/usr/bin/env python3
"""`kiln serve` under load, next to onnxruntime running the same model in-process.

    python3 benches/run_serve.py [--requests 2000] [--python target/pyenv/bin/python] [--no-build]

A Fashion-MNIST CNN (configs/fashion-mnist-cnn.toml; checkpoints/fashion-mnist-cnn when it
exists, else trained here for --train-steps steps) is exported twice: `--format kiln` (what
`kiln serve` runs, flex backend) and `--format onnx` (what onnxruntime runs).

`kiln serve` runs with batching off (`--max-batch 1`) and on (`--max-batch 32 --max-delay-ms 2`).
Against each, `kiln-serve-load` (benches/serve_load.rs) sends --requests infer requests of one
test image each from 1, 4 and 16 concurrent clients over HTTP/1.1 keep-alive on 127.0.0.1,
after 200 warm-up requests, and reports throughput, p50/p99 latency and its own CPU time; the
server's CPU time is read from /proc. Both share this machine's cores, so the generator's CPU
share is part of the result.

onnxruntime (CPUExecutionProvider, default threads) runs the ONNX export in-process on the same
images: one image per call from 1, 4 and 16 threads (batching off), and 32 images per call from
one thread (batching on); latency is per call.

Writes benches/results/serve.{json,md}.

    python3 benches/run_serve.py --drift [--rounds 3]

measures drift monitoring's cost instead: `kiln serve` with drift off (`--drift-window 0`) and on
(the default window of 1,000 samples), batching on, alternating off/on for --rounds rounds at 4
and 16 clients, while a scraper reads /metrics (which compares the window with the reference)
twice a second, as an eager Prometheus would. Writes benches/results/serve-drift.{json,md}.
"""
import argparse
import contextlib
import datetime
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILN = os.path.join(ROOT, "target/release/kiln")
LOAD = os.path.join(ROOT, "target/release/kiln-serve-load")
IMAGES = os.path.join(ROOT, "datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
CONCURRENCY = [1, 4, 16]
MODES = [("off", ["--max-batch", "1"]), ("on", ["--max-batch", "32", "--max-delay-ms", "2"])]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, **kw)


def cpu_of(pid):
    """User + system CPU seconds of process `pid` (every thread)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export(tmp, train_steps):
    run_dir = os.path.join(ROOT, "checkpoints/fashion-mnist-cnn")
    what = "checkpoints/fashion-mnist-cnn"
    if not os.path.isdir(run_dir):
        out = json.loads(run([KILN, "train", "configs/fashion-mnist-cnn.toml", "--backend", "flex",
                              "--set", f'run.output_dir="{tmp}"',
                              "--set", f"train.max_steps={train_steps}"]).stdout)
        run_dir = out["run_dir"]
        what = f"configs/fashion-mnist-cnn.toml trained here for {train_steps} steps"
    dirs = {}
    for fmt in ["kiln", "onnx"]:
        dirs[fmt] = os.path.join(tmp, f"export-{fmt}")
        run([KILN, "export", run_dir, "--format", fmt, "--out", dirs[fmt], "--backend", "flex"])
    return what, dirs


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


@contextlib.contextmanager
def serving(export_dir, flags):
    """`kiln serve` of the export as "fashion" with `flags`: yields (process, base URL); SIGTERM
    at the end, which must exit 0."""
    server = subprocess.Popen([KILN, "serve", export_dir, "--name", "fashion", "--port", "0",
                               "--backend", "flex", *flags], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield server, "http://" + json.loads(server.stdout.readline())["address"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, "kiln serve did not exit 0 on SIGTERM"


def serve_rows(export_dir, requests):
    rows = []
    for mode, flags in MODES:
        with serving(export_dir, flags) as (server, url):
            for c in CONCURRENCY:
                run([LOAD, url, "fashion", IMAGES, str(c), "200"])
                before = cpu_of(server.pid)
                out = json.loads(run([LOAD, url, "fashion", IMAGES, str(c), str(requests)]).stdout)
                out["server_cpu_seconds"] = cpu_of(server.pid) - before
                out["runtime"] = "kiln serve (HTTP)"
                out["batching"] = mode
                rows.append(out)
                print(json.dumps(out), flush=True)
    return rows


def drift_rows(export_dir, requests, rounds):
    """Throughput with drift off and on, interleaved, with /metrics scraped twice a second."""
    import urllib.request
    rows = []
    batching = ["--max-batch", "32", "--max-delay-ms", "2"]
    for r in range(rounds):
        for drift, flags in [("off", ["--drift-window", "0"]), ("on", [])]:
            with serving(export_dir, [*batching, *flags]) as (_, url):
                for c in [4, 16]:
                    run([LOAD, url, "fashion", IMAGES, str(c), "200"])
                    done = threading.Event()
                    scrapes = [0]

                    def scrape():
                        while not done.wait(0.5):
                            urllib.request.urlopen(url + "/metrics").read()
                            scrapes[0] += 1

                    scraper = threading.Thread(target=scrape)
                    scraper.start()
                    try:
                        out = json.loads(run([LOAD, url, "fashion", IMAGES, str(c), str(requests)]).stdout)
                    finally:
                        done.set()
                        scraper.join()
                    state = json.loads(urllib.request.urlopen(url + "/v2/models/fashion/drift").read())
                    out.update(drift=drift, round=r, scrapes=scrapes[0], drift_status=state["status"],
                               dataset_drift=(state.get("report") or {}).get("dataset_drift"))
                    rows.append(out)
                    print(json.dumps(out), flush=True)
    return rows


def drift_report(rows, ckpt, requests, rounds):
    import statistics
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}"
    summary = []
    lines = ["| clients | drift off (images/s, median) | drift on (images/s, median) | on / off | p99 off (ms) | p99 on (ms) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c in [4, 16]:
        med = lambda d, k: statistics.median(r[k] for r in rows if r["drift"] == d and r["concurrency"] == c)
        off, on = med("off", "throughput"), med("on", "throughput")
        summary.append({"concurrency": c, "off": off, "on": on, "ratio": on / off})
        lines.append(f"| {c} | {off:.0f} | {on:.0f} | {on / off:.3f} | {med('off', 'p99_ms'):.2f} | {med('on', 'p99_ms'):.2f} |")
    result = {"date": datetime.date.today().isoformat(), "machine": machine, "checkpoint": ckpt,
              "requests": requests, "rounds": rounds, "summary": summary, "rows": rows}
    with open(os.path.join(ROOT, "benches/results/serve-drift.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = [f"# `kiln serve` with drift monitoring off and on ({result['date']})", "",
          f"Machine: {machine}. `python3 benches/run_serve.py --drift --requests {requests} --rounds {rounds}`; "
          f"Fashion-MNIST CNN ({ckpt}), one test image per request, batching on (max 32, 2 ms); "
          "drift off is `--drift-window 0`, on is the default window (1,000 samples, compared at every "
          "scrape when new samples arrived); /metrics scraped twice a second in both. Off and on alternate, "
          f"{rounds} rounds; medians.", "", "\n".join(lines), ""]
    with open(os.path.join(ROOT, "benches/results/serve-drift.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


def ort_worker(onnx_path, requests):
    """onnxruntime in-process on the same images: one JSON line per configuration."""
    import numpy as np
    import onnxruntime as ort

    with gzip.open(IMAGES) as f:
        pixels = np.frombuffer(f.read(), dtype=np.uint8)[16:].reshape(-1, 784)[:1000]
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    sample = [d for d in inp.shape[1:]]
    x = (pixels.astype(np.float32) / 255.0).reshape([-1] + sample)

    def measure(threads, batch, calls):
        latencies, lock, counter = [], threading.Lock(), [0]

        def client():
            mine = []
            while True:
                with lock:
                    i = counter[0]
                    counter[0] += 1
                if i >= calls:
                    break
                start = (i * batch) % (len(x) - batch + 1)
                t = time.perf_counter()
                session.run(None, {inp.name: x[start:start + batch]})
                mine.append(time.perf_counter() - t)
            with lock:
                latencies.extend(mine)

        for _ in range(50):
            session.run(None, {inp.name: x[:batch]})
        cpu0, t0 = time.process_time(), time.perf_counter()
        workers = [threading.Thread(target=client) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        latencies.sort()
        pct = lambda p: latencies[max(0, min(len(latencies), int(np.ceil(len(latencies) * p))) - 1)] * 1e3
        return {"runtime": "onnxruntime (in-process)", "batching": "on" if batch > 1 else "off",
                "concurrency": threads, "requests": calls * batch, "calls": calls, "errors": 0,
                "seconds": seconds, "throughput": calls * batch / seconds,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "process_cpu_seconds": time.process_time() - cpu0}

    for c in CONCURRENCY:
        print(json.dumps(measure(c, 1, requests)), flush=True)
    print(json.dumps(measure(1, 32, max(1, requests // 32))), flush=True)


def table(rows):
    lines = ["| runtime | batching | clients | throughput (images/s) | p50 (ms) | p99 (ms) | generator CPU (s) | server CPU (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gen = f"{r['generator_cpu_seconds']:.2f} ({100 * r['generator_cpu_seconds'] / r['seconds']:.0f}% of a core)" if "generator_cpu_seconds" in r else "-"
        srv = f"{r['server_cpu_seconds']:.2f}" if "server_cpu_seconds" in r else f"{r['process_cpu_seconds']:.2f} (in-process)"
        lines.append(f"| {r['runtime']} | {r['batching']} | {r['concurrency']} | {r['throughput']:.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {gen} | {srv} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--python", default=os.path.join(ROOT, "target/pyenv/bin/python"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--ort-worker", nargs=2, metavar=("ONNX", "REQUESTS"))
    ap.add_argument("--drift", action="store_true", help="measure drift monitoring's cost")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.ort_worker:
        ort_worker(args.ort_worker[0], int(args.ort_worker[1]))
        return
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "kiln-cli", "-p", "kiln-benches",
                        "--bin", "kiln", "--bin", "kiln-serve-load"], cwd=ROOT, check=True)
    os.makedirs(os.path.join(ROOT, "benches/results"), exist_ok=True)
    if args.drift:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt, dirs = export(tmp, args.train_steps)
            rows = drift_rows(dirs["kiln"], args.requests, args.rounds)
        drift_report(rows, ckpt, args.requests, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, dirs = export(tmp, args.train_steps)
        rows = serve_rows(dirs["kiln"], args.requests)
        ort = run([args.python, __file__, "--ort-worker", os.path.join(dirs["onnx"], "model.onnx"),
                   str(args.requests)]).stdout
        rows += [json.loads(l) for l in ort.splitlines() if l.startswith("{")]
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}"
    result = {"date": datetime.date.today().isoformat(), "machine": machine, "checkpoint": ckpt,
              "requests": args.requests, "rows": rows}
    os.makedirs(os.path.join(ROOT, "benches/results"), exist_ok=True)
    with open(os.path.join(ROOT, "benches/results/serve.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = [f"# `kiln serve` under load vs onnxruntime in-process ({result['date']})", "",
          f"Machine: {machine}. `python3 benches/run_serve.py --requests {args.requests}`; "
          f"Fashion-MNIST CNN ({ckpt}), one 28x28 image per request; "
          "kiln serve on the flex backend over HTTP/1.1 on 127.0.0.1 (JSON bodies), "
          "onnxruntime (CPUExecutionProvider) on the ONNX export of the same checkpoint, in-process. "
          "The load generator (benches/serve_load.rs) shares the cores with the server; "
          "its CPU time is in the table.", "", table(rows), ""]
    with open(os.path.join(ROOT, "benches/results/serve.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
