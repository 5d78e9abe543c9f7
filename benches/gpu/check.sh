#!/usr/bin/env bash
# One call on a lent GPU machine (no Rust there): what only a GPU shows of Kiln's language models.
#
#   bash benches/gpu/prepare.sh         # here: cuda builds of kiln and kiln-bench, stripped, and
#                                       # the inputs, into .gpu/ (git-ignored; carried)
#   bash benches/gpu/check.sh           # there, from the repository root: writes $OUT
#
# 1. A Llama-style smoke GPT trains on CUDA in f32: its validation loss against flex's (.gpu/flex.json).
# 2. LoRA on CUDA from a Hugging Face base (.gpu/base): adapters-only checkpoint, `kiln eval`
#    equal to the training's last validation, the PEFT and merged exports checked by peft /
#    transformers against Kiln's CUDA logits and greedy text (tests/python/check_peft.py).
# 3. The KV cache on the GPU: `kiln generate` of 256 tokens, cached and recomputing.
# 4. benches/run.py --device cuda: training-step throughput of Kiln against PyTorch, GPT-2 and
#    Llama styles, two sizes each.
# Each part has its own time limit; a summary table is printed last.
#
# The first call (2026-12-04) spent most of its 10 minutes in CubeCL's autotuning: every new
# `kiln` process on CUDA tuned its matmuls and reductions again for about a minute (80 s for an
# 8-step smoke run), so parts 1-3 now tune minimally (CUBECL_AUTOTUNE_LEVEL=minimal; they check
# results, not speed) and part 4, which times, keeps the default.
set -u
export PYTHONUNBUFFERED=1 KILN_LOG=warn CUBECL_AUTOTUNE_LEVEL=minimal
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
K=$PWD/.gpu/kiln
for b in kiln kiln-bench; do [ -x ".gpu/$b" ] || xz -dk ".gpu/$b.xz"; done
RUNS=/tmp/kiln-runs
rm -rf "$RUNS"
mkdir -p "$RUNS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
LLAMA=(--set 'model.norm="rmsnorm"' --set 'model.position="rope"' --set 'model.mlp="swiglu"'
       --set model.bias=false --set model.n_head=4 --set model.n_kv_head=2)

echo "== 1. smoke Llama on cuda (f32)"
timeout 120 "$K" train configs/smoke-gpt.toml --backend cuda "${LLAMA[@]}" \
    --set "run.output_dir=\"$RUNS\"" --set 'run.name="llama-cuda"' > "$OUT/smoke.json" 2> "$OUT/smoke.log"
echo "exit $?"
python3 - "$RUNS/llama-cuda/metrics.jsonl" .gpu/flex.json <<'PY' | tee "$OUT/smoke-compare.txt"
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
cuda = [e["loss"] for e in ev if e.get("split") == "valid"]
flex = json.load(open(sys.argv[2]))["smoke_llama_valid"]
print("valid losses cuda", cuda, "flex", flex, "max diff", max(abs(a - b) for a, b in zip(cuda, flex)))
PY

echo "== 2. LoRA on cuda"
(
  set -e
  timeout 120 "$K" train .gpu/lora.toml --backend cuda --set "model.init_from=\"$PWD/.gpu/base\"" \
      --set "run.output_dir=\"$RUNS\"" > "$OUT/lora-train.json" 2> "$OUT/lora-train.log"
  RUN=$RUNS/lora-cuda
  timeout 60 "$K" eval "$RUN" --split valid --backend cuda > "$OUT/lora-eval.json"
  for f in hf peft kiln; do
    timeout 60 "$K" export "$RUN" --format $f --out "$RUNS/lora-$f" --backend cuda > /dev/null
  done
  P="ROMEO:
What"
  timeout 60 "$K" predict "$RUNS/lora-kiln" "$P" --logits --backend cuda | head -1 > "$RUNS/expected.json"
  timeout 60 "$K" generate "$RUN" --prompt "$P" --max-tokens 12 --temperature 0 --backend cuda > "$RUNS/gen.txt"
  python3 - "$RUNS/expected.json" "$RUNS/gen.txt" "$P" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
e["completion"] = text[len(sys.argv[3]):][:12]
json.dump(e, open(sys.argv[1], "w"))
PY
  python3 - "$RUN" "$OUT/lora-eval.json" <<'PY' | tee "$OUT/lora-checks.txt"
import json, sys, glob
from safetensors import safe_open
run = sys.argv[1]
last = sorted(glob.glob(run + "/step-*"), key=lambda p: int(p.rsplit("-", 1)[1]))[-1]
with safe_open(last + "/model.safetensors", "np") as f:
    names = list(f.keys())
ev = [json.loads(l) for l in open(run + "/metrics.jsonl")]
valid = [e["loss"] for e in ev if e.get("split") == "valid"][-1]
evaluated = json.load(open(sys.argv[2]))["loss"]
print("checkpoint tensors", len(names), "all adapters", all("_lora.lora_" in n for n in names))
print("last valid (training)", valid, "kiln eval", evaluated, "diff", abs(valid - evaluated))
PY
  timeout 120 python3 tests/python/check_peft.py .gpu/base "$RUNS/lora-peft" "$RUNS/lora-hf" \
      "$RUNS/expected.json" | tee "$OUT/lora-peft.json"
) 2>&1 | tail -20
echo "lora exit ${PIPESTATUS[0]}"

echo "== 3. KV cache on cuda"
(
  timeout 150 "$K" train configs/smoke-gpt.toml --backend cuda "${LLAMA[@]}" \
      --set "run.output_dir=\"$RUNS\"" --set 'run.name="kv"' --set model.n_layer=12 \
      --set model.n_embd=768 --set model.n_head=12 --set model.n_kv_head=4 \
      --set model.block_size=320 --set data.batch_size=1 --set train.max_steps=1 \
      --set train.eval_every=0 --set checkpoint.every_steps=0 > /dev/null 2> "$OUT/kv-train.log"
  for mode in cache no-cache; do
    for rep in 1 2; do
      flag=(); [ $mode = no-cache ] && flag=(--no-cache)
      KILN_LOG=info timeout 120 "$K" generate "$RUNS/kv" --prompt "ROMEO:" --max-tokens 256 --temperature 0 \
          --backend cuda "${flag[@]}" 2>&1 >/dev/null | grep -i "tokens/s" | sed "s/^/$mode: /"
    done
  done
) | tee "$OUT/kv.txt"

echo "== 4. training-step throughput"
CUBECL_AUTOTUNE_LEVEL=balanced timeout 330 python3 benches/run.py --device cuda --no-build --kiln-bin .gpu/kiln-bench \
    --python python3 --reps 2 --steps-scale 0.6 --timeout 120 \
    --models gpt-gpu,llama-gpu,gpt2-124m,llama-124m --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench exit $?"
tail -5 "$OUT/bench.log"
echo "== summary"
cat "$OUT/smoke-compare.txt" "$OUT/lora-checks.txt" "$OUT/lora-peft.json" "$OUT/kv.txt" 2>/dev/null
cat "$OUT/gpu-training-step.md" 2>/dev/null | tail -8
