#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benches/gpu/check.sh on a lent GPU machine: the cuda builds of
# kiln and kiln-bench (release, stripped), flex's validation losses of the Llama smoke run, a
# Hugging Face base folder (that run, exported) and a LoRA config on it.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
T=${CUDA_TARGET_DIR:-/tmp/cuda-target}
CARGO_TARGET_DIR=$T cargo build --release -p kiln-cli -p kiln-benches \
    --features kiln-cli/cuda,kiln-benches/cuda
rm -rf .gpu && mkdir -p .gpu
# Stripped and xz-compressed: the carry to the device machine holds 64 MiB with the tree.
for b in kiln kiln-bench; do
    strip -o ".gpu/$b" "$T/release/$b"
    xz -T2 -6 ".gpu/$b"
done
RUNS=$(mktemp -d)
KILN=target/release/kiln
$KILN train configs/smoke-gpt.toml --backend flex --set "run.output_dir=\"$RUNS\"" \
    --set 'model.norm="rmsnorm"' --set 'model.position="rope"' --set 'model.mlp="swiglu"' \
    --set model.bias=false --set model.n_head=4 --set model.n_kv_head=2 > /dev/null
python3 - "$RUNS/smoke-gpt/metrics.jsonl" > .gpu/flex.json <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
print(json.dumps({"smoke_llama_valid": [e["loss"] for e in ev if e.get("split") == "valid"]}))
PY
$KILN export "$RUNS/smoke-gpt" --format hf --out .gpu/base > /dev/null
# The smoke config without its architecture (the base brings it), with LoRA of rank 4.
python3 - > .gpu/lora.toml <<'PY'
text = open("configs/smoke-gpt.toml").read()
start = text.index("[model]")
end = text.index("\n[optimizer]", start)
text = text[:start] + '[model]\nkind = "gpt"\n' + text[end:]
text = text.replace('name = "smoke-gpt"', 'name = "lora-cuda"')
text = text.replace("max_steps = 30", "max_steps = 8").replace("eval_every = 15", "eval_every = 4")
text = text.replace("every_steps = 15", "every_steps = 4").replace("lr = 3e-3", "lr = 3e-3")
print(text + "\n[finetune]\nlora_rank = 4\nlora_alpha = 8")
PY
rm -rf "$RUNS"
du -sh .gpu
