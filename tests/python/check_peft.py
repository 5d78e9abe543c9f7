#!/usr/bin/env python3
"""Checks LoRA adapters Kiln exported in PEFT's layout against Kiln's own outputs.

    check_peft.py BASE_DIR PEFT_DIR MERGED_DIR EXPECTED.json [--atol 1e-4] [--merged-atol 1e-5]

BASE_DIR is the Hugging Face folder the fine-tune started from (`model.init_from`), PEFT_DIR
what `kiln export RUN --format peft` wrote, MERGED_DIR what `kiln export RUN --format hf` wrote
(the adapters merged into the base). EXPECTED.json is `kiln predict` of the run's Kiln export
with `--logits` (`{"prompt", "tokens", "logits"}`), with `"completion"`: Kiln's greedy
continuation of the prompt computed with the adapters unmerged (`kiln generate RUN
--temperature 0`).

It loads the base with transformers, puts the adapters on it with
`peft.PeftModel.from_pretrained` and fails unless:
- every adapter tensor of adapter_model.safetensors lands on a module, and the adapters change
  the base's logits (they were trained);
- PEFT's logits equal Kiln's within `--atol`, and the merged folder's (transformers) within
  `--merged-atol`;
- greedy generation gives Kiln's continuation token for token (its ids by the base's
  tokenizer).

It prints a one-line JSON summary (`"ok": true`, or `"ok": false` with `"error"`) and exits 1
on any mismatch, with the reason on stderr.
"""

import argparse
import json

from check_hf import Mismatch, compare_logits, greedy, load_model, run


def check(args, summary):
    import peft
    import torch
    from safetensors import safe_open

    with open(args.expected, encoding="utf-8") as f:
        expected = json.load(f)
    tokens = expected["tokens"]
    summary.update(peft=peft.__version__, tokens=len(tokens))

    base = load_model(args.base_dir)
    with torch.no_grad():
        base_logits = base(torch.tensor([tokens], dtype=torch.long)).logits[0]
    model = peft.PeftModel.from_pretrained(base, args.peft_dir).eval()

    # Every saved adapter tensor is one of the model's (PEFT names them without the adapter name).
    with safe_open(f"{args.peft_dir}/adapter_model.safetensors", "pt") as f:
        saved = set(f.keys())
    loaded = {k.replace(".default", "") for k in model.state_dict() if "lora_" in k}
    if not saved or saved - loaded:
        raise Mismatch(f"adapter tensors that fit no module: {sorted(saved - loaded)[:5]}")
    summary["adapter_tensors"] = len(saved)

    with torch.no_grad():
        lora_logits = model(torch.tensor([tokens], dtype=torch.long)).logits[0]
    change = (lora_logits - base_logits).abs().max().item()
    summary["adapter_change"] = change
    if not change > 1e-4:
        raise Mismatch(f"the adapters change the base's logits by only {change:.3g}")

    diff = compare_logits(model, tokens, expected["logits"])
    summary["max_abs_diff_kiln"] = diff
    if not diff <= args.atol:
        raise Mismatch(f"PEFT's logits differ from Kiln's by up to {diff:.3g} (atol {args.atol:g})")

    merged = load_model(args.merged_dir)
    with torch.no_grad():
        merged_logits = merged(torch.tensor([tokens], dtype=torch.long)).logits[0]
    diff = (merged_logits - lora_logits).abs().max().item()
    summary["max_abs_diff_merged"] = diff
    if not diff <= args.merged_atol:
        raise Mismatch(
            f"the merged export's logits differ from base + adapters by up to {diff:.3g} "
            f"(atol {args.merged_atol:g})"
        )

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.base_dir)
    want = tokenizer(expected["completion"], add_special_tokens=False)["input_ids"]
    got, how = greedy(model, tokens, len(want))
    summary["generation"] = how
    summary["generation_match"] = got == want
    if got != want:
        raise Mismatch(
            f"PEFT's greedy continuation is {tokenizer.decode(got)!r}, "
            f"Kiln's {expected['completion']!r}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_dir", help="the base model's Hugging Face folder")
    parser.add_argument("peft_dir", help="the adapters Kiln exported with --format peft")
    parser.add_argument("merged_dir", help="the merged model Kiln exported with --format hf")
    parser.add_argument("expected", help="Kiln's outputs (kiln predict ... --logits)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest logit difference from Kiln's (default 1e-4)")
    parser.add_argument("--merged-atol", type=float, default=1e-5,
                        help="largest logit difference from the merged export (default 1e-5)")
    args = parser.parse_args()
    run(check, args, f"check_peft: {args.peft_dir}")


if __name__ == "__main__":
    main()
