#!/usr/bin/env bash
# GPU check for sharded training (issue 16): one GPU, no network, < 10 minutes.
#
# For Qwen2.5-1.5B and Qwen2.5-7B shapes with random weights (config values in
# scripts/sharding_bench.py, nothing downloaded) it prints, as JSON lines:
#   - peak GPU memory and step time of LaSeR updates on one 8,705-token row (512 prompt + 8,192
#     response tokens, gradient checkpointing on): unsharded as today's trainer (weights and AdamW
#     state in bf16) and FSDP2 with world size 1 (float32 master weights and AdamW state, bf16 compute);
#   - tokens/s of the built-in sampler vs model.generate at batch 64 x 1024 new tokens in bf16, and
#     of the sampler on the FSDP2 model inside the generation window (1.5B).
# Usage:  bash scripts/gpu_check.sh [LOG]        (LOG defaults to gpu_check.log)
# Knobs (environment): DEVICE (cuda), SHAPES ("1.5b 7b"), STEPS (2), RESPONSE (8192), GEN_BATCH (64),
# GEN_TOKENS (1024), LIMIT_S (270 seconds per shape), VLLM_SHAPE (1.5b). Tested on CPU with a tiny shape by
# tests/test_sharding.py.
# Where vLLM is installed, a last step measures the vLLM engine on VLLM_SHAPE (JSON lines with "what": "vllm").
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-gpu_check.log}
DEVICE=${DEVICE:-cuda}
SHAPES=${SHAPES:-"1.5b 7b"}
STEPS=${STEPS:-2}
RESPONSE=${RESPONSE:-8192}
GEN_BATCH=${GEN_BATCH:-64}
GEN_TOKENS=${GEN_TOKENS:-1024}
LIMIT_S=${LIMIT_S:-270}
VLLM_SHAPE=${VLLM_SHAPE:-1.5b}
PY=${PYTHON:-python}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

{
  echo "# gpu_check $(date -u +%FT%TZ)"
  $PY -c "import torch, transformers, accelerate; print('# torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# /'
  fi
} 2>&1 | tee "$LOG"

status=0
for shape in $SHAPES; do
  extra=()
  [ "$shape" = 1.5b ] && extra+=(--gen-fsdp)
  [ "$shape" = tiny ] && extra+=(--gen-fsdp)
  echo "# shape $shape" | tee -a "$LOG"
  timeout "$LIMIT_S" $PY scripts/sharding_bench.py --device "$DEVICE" --shape "$shape" --sharding both \
      --steps "$STEPS" --batch 1 --prompt 512 --response "$RESPONSE" \
      --gen-batch "$GEN_BATCH" --gen-prompt 64 --gen-tokens "$GEN_TOKENS" "${extra[@]}" 2>&1 \
    | grep --line-buffered -v -e "Warning" -e "warnings.warn" | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "# shape $shape: exit status $rc$([ "$rc" -eq 124 ] && echo ' (time limit)')" | tee -a "$LOG"
    status=1
  fi
done
# --- vLLM engine (issue 23), where vLLM is installed: rollout tokens/s with and without the lp_z pass, the
# pass's prefix-cache hit rate, lp_z against the teacher-forced scorer, weight sync and sleep/wake times.
if $PY -c "import vllm" >/dev/null 2>&1; then
  echo "# vllm $VLLM_SHAPE" | tee -a "$LOG"
  VLLM_ENABLE_V1_MULTIPROCESSING=0 timeout "$LIMIT_S" $PY - "$DEVICE" "$VLLM_SHAPE" "$GEN_BATCH" "$GEN_TOKENS" <<'PYEOF' 2>&1 \
    | grep --line-buffered -v -e "Warning" -e "warnings.warn" -e " INFO " | tee -a "$LOG"
import json, sys, tempfile, time
import torch
sys.path.insert(0, "scripts")
sys.path.insert(0, "src")
import sharding_bench as sb
from laser_rl.rollout import SamplingConfig, score_responses
from laser_rl.rollout.vllm_engine import VLLMEngine

device, shape, batch, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if shape == "tiny":  # vLLM's CPU attention needs a head size of 32 or more
    sb.SHAPES["tiny"] = {**sb.SHAPES["tiny"], "num_attention_heads": 2, "num_key_value_heads": 2}
dtype = torch.bfloat16 if device == "cuda" else torch.float32
model = sb.build_model(shape, None, dtype, torch.device(device)).eval()
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(1)
prompts = torch.randint(3, vocab, (batch, 64), generator=g).tolist()
stops = list(range(3, 3 + max(1, round(2 * vocab / tokens))))  # a random model stops after ~tokens/2 tokens
base = {"what": "vllm", "shape": shape, "device": device, "dtype": str(dtype).split(".")[-1], "batch": batch,
        "new_tokens": tokens}
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    t0 = time.perf_counter()
    engine = VLLMEngine(folder, pad_id=0, stop_ids=stops, z_id=1, dtype=base["dtype"], enable_sleep_mode=True,
                        max_model_len=64 + tokens + 1)
    print(json.dumps({**base, "step": "build", "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
no_stop = SamplingParams(temperature=1.0, max_tokens=tokens, ignore_eos=True, detokenize=False)
requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
engine.llm.generate(requests, no_stop, use_tqdm=False)  # warm-up
t0 = time.perf_counter()
engine.llm.generate(requests, no_stop, use_tqdm=False)
dt = time.perf_counter() - t0
print(json.dumps({**base, "step": "generate, no stop", "seconds": round(dt, 2),
                  "tokens_per_s": round(batch * tokens / dt, 1)}), flush=True)
cfg = SamplingConfig(temperature=1.0, max_new_tokens=tokens)
engine.generate(prompts[:2], cfg, row_seeds=[0, 1])  # warm-up
times = {}
for with_score in (False, True):
    engine.z_id = 1 if with_score else None
    t0 = time.perf_counter()
    roll = engine.generate(prompts, cfg, row_seeds=list(range(batch)))
    times[with_score] = time.perf_counter() - t0
fin = roll.finished
tf = score_responses(model, prompts, roll.responses(), z_id=1, pad_id=0, stop_ids=stops, eos_id=stops[0],
                     batch_size=8).float().cpu()
print(json.dumps({**base, "step": "rollout", "seconds_without_score": round(times[False], 2),
                  "seconds_with_score": round(times[True], 2), "finished": int(fin.sum()),
                  "mean_tokens": round(float(roll.lengths.float().mean()), 1),
                  "score_cache_hit_rate": round(engine.cache_stats.hit_rate, 3),
                  "lp_z_vs_teacher_forced_max_abs_diff": float((roll.lp_z[fin].cpu() - tf[fin]).abs().max())
                  if bool(fin.any()) else None}), flush=True)
t0 = time.perf_counter()
n = engine.sync_weights(model)
print(json.dumps({**base, "step": "sync_weights", "tensors": n, "seconds": round(time.perf_counter() - t0, 2)}),
      flush=True)
free = (lambda: torch.cuda.mem_get_info()[0] / 2**30) if device == "cuda" else (lambda: 0.0)
before = free()
t0 = time.perf_counter()
slept = engine.sleep(level=1)
t_sleep = time.perf_counter() - t0
after = free()
t0 = time.perf_counter()
engine.wake_up()
print(json.dumps({**base, "step": "sleep/wake_up", "supported": slept, "sleep_s": round(t_sleep, 2),
                  "wake_s": round(time.perf_counter() - t0, 2), "freed_gib": round(after - before, 2)}), flush=True)
PYEOF
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "# vllm: exit status $rc$([ "$rc" -eq 124 ] && echo ' (time limit)')" | tee -a "$LOG"
    status=1
  fi
else
  echo "# vllm: not installed, step skipped (pip install \"laser-rl[vllm]\")" | tee -a "$LOG"
fi
echo "# done (status $status); results in $LOG" | tee -a "$LOG"
exit $status
