#!/usr/bin/env python3
"""Checks a Kiln ONNX classifier (or regression) against the logits Kiln computed.

Usage: python check_onnx.py MODEL.onnx CASES.json [--atol 1e-4]

CASES.json is {"inputs": [[f32, ... features], ...], "logits": [[... classes], ...]}: input
rows and Kiln's logits for them. The model runs on onnxruntime (CPUExecutionProvider, default
session options); the check passes when

- `onnx.checker.check_model(full_check=True)` accepts the model (when the onnx package imports);
- the largest absolute difference of the logits is at most atol * max(1, scale), where scale is
  the largest |logit| Kiln computed (float32 sums of a layer's width round relative to the
  logits' size, so large logits get a proportionally larger tolerance);
- the argmax agrees on every row whose top two Kiln logits are further apart than that
  tolerance (a nearer tie may legitimately flip);
- every row of `probabilities` sums to 1 (within 1e-5) and holds the softmax of `logits`.

A regression's model has one output, `prediction` (`[batch, 1]`, in the target's units): it is
checked as the logits are (CASES.json then holds Kiln's predictions as one-value rows).

Prints one JSON line, {"max_abs_diff", "tolerance", "logit_scale", "argmax_agree", "rows",
"opset", "ir_version", "onnxruntime", "ok"}, and exits 1 with a message on stderr on a mismatch
(2 on unusable arguments).
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def fail(message, summary, code=1):
    summary["ok"] = False
    summary["error"] = message
    print(json.dumps(summary))
    print(f"check_onnx: {message}", file=sys.stderr)
    sys.exit(code)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("cases", help='JSON {"inputs": [[...]], "logits": [[...]]}')
    parser.add_argument("--atol", type=float, default=1e-4, help="logit tolerance (default 1e-4)")
    args = parser.parse_args()
    summary = {"model": args.model, "onnxruntime": ort.__version__}

    try:
        with open(args.cases) as f:
            cases = json.load(f)
        inputs = np.asarray(cases["inputs"], dtype=np.float32)
        expected = np.asarray(cases["logits"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"cannot read the cases {args.cases}: {e}", summary, 2)
    if inputs.ndim != 2 or expected.ndim != 2 or len(inputs) != len(expected) or not len(inputs):
        fail(
            f"the cases need as many input rows as logit rows (got inputs {inputs.shape}, "
            f"logits {expected.shape})",
            summary,
            2,
        )

    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        model = onnx.load(args.model)
        summary["opset"] = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
        )
        summary["ir_version"] = model.ir_version
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # the checker raises several exception types
            fail(f"onnx.checker rejects the model: {e}", summary)
    else:
        summary["opset"] = None
        summary["ir_version"] = None

    try:
        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        regression = [o.name for o in session.get_outputs()] == ["prediction"]
        if regression:
            (logits,) = session.run(["prediction"], {"input": inputs})
            probabilities = None
        else:
            logits, probabilities = session.run(["logits", "probabilities"], {"input": inputs})
    except Exception as e:  # onnxruntime raises its own exception types
        fail(f"onnxruntime cannot run the model: {e}", summary)

    rows = len(inputs)
    summary["rows"] = rows
    summary["outputs"] = "prediction" if regression else "logits, probabilities"
    if logits.shape != expected.shape:
        fail(f"logits have shape {logits.shape}, Kiln's {expected.shape}", summary)
    scale = float(np.abs(expected).max())
    tolerance = args.atol * max(1.0, scale)
    diff = float(np.abs(logits.astype(np.float64) - expected).max())
    agree = logits.argmax(axis=1) == expected.argmax(axis=1)
    top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else None
    decisive = (top2[:, 1] - top2[:, 0] > tolerance) if top2 is not None else np.ones(rows, bool)
    summary.update(
        max_abs_diff=diff,
        tolerance=tolerance,
        logit_scale=scale,
        argmax_agree=int(agree.sum()),
    )
    if not regression:
        sums = probabilities.astype(np.float64).sum(axis=1)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        softmax = shifted / shifted.sum(axis=1, keepdims=True)
        summary["probability_sum_max_err"] = float(np.abs(sums - 1.0).max())

    if not np.isfinite(logits).all():
        fail("onnxruntime's logits are not all finite", summary)
    if diff > tolerance:
        row = int(np.abs(logits - expected).max(axis=1).argmax())
        fail(
            f"logits differ by {diff:.3g} > tolerance {tolerance:.3g} (atol {args.atol} x "
            f"max(1, logit scale {scale:.3g})); worst row {row}: onnxruntime "
            f"{logits[row].tolist()}, Kiln {expected[row].tolist()}",
            summary,
        )
    if not agree[decisive].all():
        bad = np.flatnonzero(~agree & decisive).tolist()
        fail(f"argmax differs on rows {bad[:10]} of {rows}", summary)
    if not regression and np.abs(sums - 1.0).max() > 1e-5:
        fail(f"probability rows sum to {sums.min()}..{sums.max()}, not 1", summary)
    if not regression and np.abs(probabilities - softmax).max() > 1e-5:
        fail("probabilities are not the softmax of the logits", summary)
    summary["ok"] = True
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
