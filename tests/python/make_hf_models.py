#!/usr/bin/env python3
"""Writes small randomly initialized Hugging Face models with transformers' own save_pretrained,
and the logits transformers computes for them, for Kiln's import tests (`model.init_from`).

    make_hf_models.py OUT_DIR

For each case OUT_DIR/<case>/ holds the folder transformers wrote (config.json, safetensors
files, a character-level tokenizer.json) and OUT_DIR/<case>.json holds
`{"tokens": [ids], "logits": [[V floats] per position], "dtype": "float32" | "bfloat16"}`:
transformers' logits in float32, from the weights as saved (bf16 weights upcast to float32
before the forward pass, as Kiln reads them).

Cases: a GPT-2 (tied head, gelu_new), a Llama with grouped-query attention (untied head, RoPE
base 500000), the same Llama saved in several shards (model.safetensors.index.json), and a
Llama saved in bfloat16.
"""

import json
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = list("\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
TOKENS = [VOCAB.index(c) for c in "ROMEO: Is the day so young?\nBENVOLIO:"]


def char_tokenizer():
    """A tokenizers WordLevel model over single characters (as Kiln's char export writes)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": "[\\s\\S]"},
            "behavior": "Isolated",
            "invert": False,
        },
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {c: i for i, c in enumerate(VOCAB)}, "unk_token": "<unk>"},
    }


def perturb(model, seed):
    """Moves every parameter away from its initialization (norms one, biases zero), so that
    every tensor shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def save(out, name, model, dtype=torch.float32, **kwargs):
    folder = f"{out}/{name}"
    model = model.to(dtype)
    model.save_pretrained(folder, **kwargs)
    with open(f"{folder}/tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(char_tokenizer(), f)
    with torch.no_grad():
        logits = model.float()(torch.tensor([TOKENS])).logits[0]
    with open(f"{out}/{name}.json", "w", encoding="utf-8") as f:
        json.dump({"tokens": TOKENS, "logits": logits.tolist(), "dtype": str(dtype).removeprefix("torch.")}, f)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=4,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    ).eval()
    perturb(gpt2, 1)
    save(out, "gpt2", gpt2)
    llama_config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None,
    )
    llama = LlamaForCausalLM(llama_config).eval()
    perturb(llama, 2)
    save(out, "llama", llama)
    save(out, "llama-sharded", llama, max_shard_size="20KB")
    save(out, "llama-bf16", llama, dtype=torch.bfloat16)


if __name__ == "__main__":
    main()
