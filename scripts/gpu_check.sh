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
# GEN_TOKENS (1024), LIMIT_S (270 seconds per shape). Tested on CPU with a tiny shape by
# tests/test_sharding.py.
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
echo "# done (status $status); results in $LOG" | tee -a "$LOG"
exit $status
