"""Loads a Kiln-format export outside Kiln and checks it computes Kiln's outputs.

Reads manifest.json, checks the sha256 of model.safetensors, dequantizes every tensor from the
documented layout (README, "Exporting for serving") with the safetensors library and numpy, runs
the model the manifest describes in PyTorch, and compares its logits with Kiln's.

    python check_kiln.py EXPORT_DIR EXPECTED.json [--atol 1e-4]

EXPECTED.json: for a classifier {"inputs": [[features...]...], "logits": [[classes...]...]}
(raw features, as `kiln predict` reads them); for a GPT the object `kiln predict EXPORT PROMPT
--logits` prints ({"tokens": [...], "logits": [[vocab...] per position]}). Prints one JSON line
and exits 1 on a mismatch.
"""

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def dequantize(name, entry, stored):
    """The float32 tensor `name` stands for, in its logical shape."""
    shape = entry["shape"]
    if entry["kind"] == "f32":
        return stored[name].astype(np.float32)
    axis = entry["axis"]
    c = shape[axis]
    k = int(np.prod(shape)) // c
    scale = stored[name + ".scale"].astype(np.float32)
    if entry["kind"] == "int8":
        q = stored[name].astype(np.float32)  # the tensor's own shape
        bshape = [1] * len(shape)
        bshape[axis] = c
        return q * scale.reshape(bshape)
    if entry["kind"] != "int4":
        fail(f"{name}: unknown kind {entry['kind']}")
    block = entry["block"]
    packed = stored[name]
    nibbles = np.empty(packed.size * 2, dtype=np.int8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    values = np.where(nibbles > 7, nibbles - 16, nibbles)[: c * k].astype(np.float32)
    m = values.reshape(c, k) * np.repeat(scale, block, axis=1)[:, :k]  # [C, K]
    if axis == 0:
        return m.reshape(shape)
    return m.T.reshape(shape)


def act(name):
    return {
        "relu": F.relu,
        "gelu": F.gelu,  # exact (erf)
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
    }[name]


def mlp(w, x, prefix, layers, activation):
    for i in range(layers):
        x = x @ w[f"{prefix}layers.{i}.weight"]
        if f"{prefix}layers.{i}.bias" in w:
            x = x + w[f"{prefix}layers.{i}.bias"]
        if i + 1 < layers:
            x = act(activation)(x)
    return x


def classifier(manifest, w, inputs):
    model = manifest["architecture"]["model"]
    spec = manifest["input"]
    x = torch.tensor(inputs, dtype=torch.float32)
    if spec["standardize"] is not None:
        mean = torch.tensor(spec["standardize"]["mean"])
        std = torch.tensor(spec["standardize"]["std"])
        x = (x - mean) / torch.where(std == 0, torch.ones_like(std), std)
    layers = len(model["hidden"]) + 1
    if model["kind"] == "mlp":
        return mlp(w, x, "", layers, model["activation"])
    x = x.reshape([-1] + spec["shape"])
    for i in range(len(model["channels"])):
        x = F.conv2d(x, w[f"blocks.{i}.conv.weight"], w.get(f"blocks.{i}.conv.bias"),
                     padding=model["padding"])
        if f"blocks.{i}.norm.gamma" in w:
            x = F.batch_norm(x, w[f"blocks.{i}.norm.running_mean"],
                             w[f"blocks.{i}.norm.running_var"], w[f"blocks.{i}.norm.gamma"],
                             w[f"blocks.{i}.norm.beta"], training=False, eps=1e-5)
        x = act(model["activation"])(x)
        if (i + 1) % model["pool_every"] == 0:
            if model["pooling"] == "max":
                x = F.max_pool2d(x, 2, 2)
            elif model["pooling"] == "avg":
                x = F.avg_pool2d(x, 2, 2)
    return mlp(w, x.flatten(1), "head.", layers, model["activation"])


def gpt(manifest, w, tokens):
    model = manifest["architecture"]["model"]
    n_head, t = model["n_head"], len(tokens)
    ids = torch.tensor(tokens)
    x = w["wte.weight"][ids] + w["wpe.weight"][:t]

    def norm(x, p):
        return F.layer_norm(x, x.shape[-1:], w[p + ".gamma"], w.get(p + ".beta"), eps=1e-5)

    def linear(x, p):
        y = x @ w[p + ".weight"]
        return y + w[p + ".bias"] if p + ".bias" in w else y

    for i in range(model["n_layer"]):
        h = f"h.{i}"
        q, k, v = linear(norm(x, h + ".ln_1"), h + ".attn.c_attn").chunk(3, dim=-1)
        d = q.shape[-1] // n_head
        q, k, v = (z.reshape(t, n_head, d).transpose(0, 1) for z in (q, k, v))
        scores = q @ k.transpose(1, 2) / math.sqrt(d)
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -math.inf)
        y = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, n_head * d)
        x = x + linear(y, h + ".attn.c_proj")
        x = x + linear(F.gelu(linear(norm(x, h + ".ln_2"), h + ".mlp.c_fc")), h + ".mlp.c_proj")
    x = norm(x, "ln_f")
    head = w["lm_head"] if "lm_head" in w else w["wte.weight"].T
    return x @ head


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("expected", type=Path)
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    manifest = json.loads((args.export / "manifest.json").read_text())
    # Version 2 records only the model kind's keys in architecture.model; version 1 had every
    # kind's keys. The keys read below are the kind's own, in both. Version 3 adds input.table
    # (a table's column schema), which the checks below do not need: they feed the features.
    # Version 4 adds `drift`: the drift reference's file, its sha256 and size within its bound.
    if manifest.get("format") != "kiln-export" or manifest.get("format_version") not in (1, 2, 3, 4):
        fail(f"{args.export}: not a kiln-export version 1 to 4 manifest")
    if manifest["format_version"] >= 4:
        drift = manifest["drift"]
        reference = (args.export / drift["file"]).read_bytes()
        if hashlib.sha256(reference).hexdigest() != drift["sha256"]:
            fail(f"{drift['file']}: sha256 differs from the manifest")
        if not len(reference) == drift["bytes"] <= drift["bound_bytes"]:
            fail(f"{drift['file']}: {len(reference)} bytes, the manifest says {drift['bytes']} within {drift['bound_bytes']}")
        names = [f["name"] for f in json.loads(reference)["features"]]
        if names != drift["features"]:
            fail(f"{drift['file']}: features {names}, the manifest lists {drift['features']}")
    weights_file = args.export / "model.safetensors"
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    if digest != manifest["files"]["model.safetensors"]["sha256"]:
        fail(f"{weights_file}: sha256 differs from the manifest")
    stored = load_file(str(weights_file))
    expected_names = set(manifest["tensors"]) | {
        n + ".scale" for n, e in manifest["tensors"].items() if e["kind"] != "f32"
    }
    if set(stored) != expected_names:
        fail(f"stored tensors {sorted(set(stored) ^ expected_names)} disagree with the manifest")
    w = {}
    for name, entry in manifest["tensors"].items():
        t = dequantize(name, entry, stored)
        if list(t.shape) != entry["shape"]:
            fail(f"{name}: dequantized shape {list(t.shape)} is not {entry['shape']}")
        w[name] = torch.from_numpy(np.ascontiguousarray(t))

    expected = json.loads(args.expected.read_text())
    with torch.no_grad():
        if manifest["input"]["kind"] == "tokens":
            logits = gpt(manifest, w, expected["tokens"])
        else:
            logits = classifier(manifest, w, expected["inputs"])
    want = torch.tensor(expected["logits"], dtype=torch.float32)
    if logits.shape != want.shape:
        fail(f"logits of shape {list(logits.shape)}, Kiln's are {list(want.shape)}")
    diff = (logits - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    ok = diff <= args.atol * scale
    print(json.dumps({
        "export": str(args.export), "scheme": manifest["quantization"]["scheme"],
        "rows": int(want.shape[0]), "max_abs_diff": diff, "tolerance": args.atol * scale,
        "argmax_agree": int((logits.argmax(-1) == want.argmax(-1)).sum()), "ok": ok,
    }))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
