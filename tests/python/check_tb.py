"""Reads a Kiln run's TensorBoard events with TensorBoard's own reader (EventAccumulator) and
compares them with the run's metrics.jsonl, the source of truth.

    python tests/python/check_tb.py RUN_DIR TB_DIR

Prints one JSON object: the tags, the points compared, the hparams TensorBoard read and the
session's end status. Exits 1 (with the differences) when a scalar of metrics.jsonl is missing,
differs (as float32) or has a point metrics.jsonl lacks, e.g. a point of an interrupted attempt
after the checkpoint a run resumed from.
"""
import json
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def expected(run_dir):
    """{tag: [(step, value)]}: every numeric field of every split or event record."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        group = rec.get("split") or rec.get("event")
        if not isinstance(group, str):
            continue
        for key, value in sorted(rec.items()):
            if key in ("step", "time", "split", "event") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                out.setdefault(f"{group}/{key}", []).append((rec["step"], float(np.float32(value))))
    return out


def main():
    run_dir, tb_dir = sys.argv[1], sys.argv[2]
    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    want = expected(run_dir)
    problems = []
    for tag, points in want.items():
        if tag not in tags["scalars"]:
            problems.append(f"{tag}: missing")
            continue
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        if got != points:
            problems.append(f"{tag}: TensorBoard has {got}, metrics.jsonl {points}")
    for tag in tags["scalars"]:
        if tag not in want:
            problems.append(f"{tag}: not in metrics.jsonl")
    text = [t for t in tags["tensors"] if t.endswith("text_summary")]
    config = acc.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode() if text else ""
    hparams, status = {}, None
    for tag, content in acc.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for k, v in data.session_start_info.hparams.items():
                hparams[k] = getattr(v, v.WhichOneof("kind"))
        if data.HasField("session_end_info"):
            status = data.session_end_info.status
    print(json.dumps({
        "scalar_tags": sorted(tags["scalars"]),
        "points": sum(len(p) for p in want.values()),
        "text_tags": text,
        "config": config,
        "hparams": hparams,
        "end_status": status,
        "problems": problems,
    }))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
