#!/usr/bin/env python3
"""Checks a Hugging Face GPT-2 or Llama folder exported by Kiln against Kiln's own outputs.

    check_hf.py HF_DIR EXPECTED.json [--atol 1e-4]

EXPECTED.json is what `kiln predict EXPORT PROMPT --logits` prints, one JSON object:
`{"prompt": str, "tokens": [ids], "logits": [[V floats] per position]}`, optionally with
`"completion": str`, Kiln's greedy (temperature 0) continuation of the prompt, and
`"completion_tokens": [ids]`, the ids Kiln generated (else the completion's encoding).

The check loads `AutoTokenizer` and the model class that config.json's `architectures` names
(`GPT2LMHeadModel` or `LlamaForCausalLM`) from HF_DIR (torch, float32, eval) and fails unless:
- the model loads with no missing, unexpected or mismatched weights;
- the tokenizer encodes the prompt to exactly `tokens` and decodes them back to the prompt;
- transformers' logits of `tokens` equal Kiln's within `--atol` (max absolute difference);
- with a completion: greedy generation of as many tokens gives exactly the completion. When
  prompt and completion do not fit the context (`n_positions`), Kiln keeps generating on the
  last `n_positions` tokens; transformers' `generate` cannot, so the check then runs the same
  greedy loop on a cropped window itself, with the generation config's suppressed tokens.

It prints a one-line JSON summary (`"ok": true` or `"ok": false` with `"error"`) and exits 1 on
any mismatch, with the reason on stderr.
"""

import argparse
import json
import logging
import sys


class Mismatch(Exception):
    """A difference between the Hugging Face folder and Kiln's outputs (its message)."""


def load_model(hf_dir):
    """The model of `hf_dir`, float32 in eval mode, and the weight warnings of its loading."""
    import transformers

    with open(f"{hf_dir}/config.json", encoding="utf-8") as f:
        architectures = json.load(f).get("architectures")
    if architectures not in (["GPT2LMHeadModel"], ["LlamaForCausalLM"]):
        raise Mismatch(f"config.json names architectures {architectures}, not GPT-2's or Llama's")
    model_class = getattr(transformers, architectures[0])

    # Collect what transformers logs while loading: weight warnings go through its logger.
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = transformers.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        model, info = model_class.from_pretrained(hf_dir, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    model = model.float().eval()
    problems = {
        key: sorted(str(k) for k in info.get(key, []))
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
        if info.get(key)
    }
    if problems:
        raise Mismatch(f"loading {hf_dir} reported {problems}")
    weight_warnings = [
        r
        for r in records
        if any(w in r.lower() for w in ("newly initialized", "not used", "missing", "unexpected"))
    ]
    if weight_warnings:
        raise Mismatch(f"loading {hf_dir} warned: {weight_warnings}")
    return model


def check_tokenizer(tokenizer, prompt, tokens):
    encoded = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if encoded != tokens:
        raise Mismatch(f"the tokenizer encodes {prompt!r} to {encoded}, Kiln to {tokens}")
    decoded = tokenizer.decode(tokens)
    if decoded != prompt:
        raise Mismatch(f"the tokenizer decodes {tokens} to {decoded!r}, not the prompt {prompt!r}")


def compare_logits(model, tokens, expected):
    import torch

    with torch.no_grad():
        got = model(torch.tensor([tokens], dtype=torch.long)).logits[0]
    want = torch.tensor(expected, dtype=torch.float32)
    if tuple(got.shape) != tuple(want.shape):
        raise Mismatch(
            f"transformers' logits have shape {list(got.shape)}, Kiln's {list(want.shape)}"
        )
    return (got - want).abs().max().item()


def greedy(model, tokens, n):
    """`n` greedy tokens after `tokens`, as Kiln generates them; and how they were made."""
    import torch

    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    if len(tokens) + n <= context:
        ids = torch.tensor([tokens], dtype=torch.long)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
            )
        return out[0, len(tokens):].tolist(), "generate"
    suppressed = list(model.generation_config.suppress_tokens or [])
    ids = list(tokens)
    with torch.no_grad():
        for _ in range(n):
            window = torch.tensor([ids[-context:]], dtype=torch.long)
            logits = model(window).logits[0, -1]
            logits[suppressed] = float("-inf")
            ids.append(int(logits.argmax()))
    return ids[len(tokens):], f"greedy loop on the last {context} tokens"


def check(args, summary):
    """Runs every check, recording what it finds in `summary`; raises `Mismatch`."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    with open(args.expected, encoding="utf-8") as f:
        expected = json.load(f)
    prompt, tokens = expected["prompt"], expected["tokens"]
    summary.update(tokens=len(tokens), transformers=transformers.__version__,
                   torch=torch.__version__)

    tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)
    if prompt:
        check_tokenizer(tokenizer, prompt, tokens)
    else:
        # Kiln generates from an empty prompt by starting at a line break: nothing to encode.
        summary["tokenizer"] = "not checked (empty prompt)"
    model = load_model(args.hf_dir)

    diff = compare_logits(model, tokens, expected["logits"])
    summary["max_abs_diff"] = diff
    if not diff <= args.atol:
        raise Mismatch(f"logits differ by up to {diff:.3g} (atol {args.atol:g})")

    completion = expected.get("completion")
    summary["generation_match"] = None
    if completion is not None:
        # Kiln's generated ids when given: a subword text need not re-encode to the ids drawn.
        want = expected.get("completion_tokens")
        if want is None:
            want = tokenizer(completion, add_special_tokens=False)["input_ids"]
        got, how = greedy(model, tokens, len(want))
        summary["generation"] = how
        text = tokenizer.decode(got)
        summary["generation_match"] = got == want and text == completion
        if not summary["generation_match"]:
            raise Mismatch(
                f"greedy continuation ({how}) is {text!r} {got}, Kiln's {completion!r} {want}"
            )


def run(check, args, what):
    """Runs `check(args, summary)` and prints the one-line JSON summary; on a `Mismatch` also the
    reason on stderr (naming `what`), and exits 1."""
    summary = {}
    try:
        check(args, summary)
    except Mismatch as e:
        summary.update(ok=False, error=str(e))
        print(json.dumps(summary))
        print(f"{what}: {e}", file=sys.stderr)
        sys.exit(1)
    summary["ok"] = True
    print(json.dumps(summary))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir", help="the Hugging Face folder Kiln exported")
    parser.add_argument("expected", help="Kiln's outputs (kiln predict ... --logits)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest allowed absolute logit difference (default 1e-4)")
    args = parser.parse_args()
    run(check, args, f"check_hf: {args.hf_dir}")


if __name__ == "__main__":
    main()
