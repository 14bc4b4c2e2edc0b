#!/usr/bin/env bash
# Train a GPT of GPT-2 small's shape on every GPU of this machine for about two minutes and
# print tokens/s and MFU (model FLOPs utilisation, PaLM's definition; see minidp/train.py).
#
#   make gpu-check            # or: bash scripts/gpu_check.sh [extra minidp.train options]
#
# Needs a CUDA build of torch in .venv (see the README, "GPU node"). CI has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
  echo "gpu-check: no CUDA GPU visible to torch ($($PY -c 'import torch; print(torch.__version__)'))" >&2
  exit 1
fi
$PY -c "import torch; print('gpu-check:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count())"
# 12 layers x 768 wide x 12 heads, 1024 tokens of context: GPT-2 small (124M with its 50k-token
# vocabulary; 85M here, where the vocabulary is 256 bytes). 16 sequences per GPU per step.
$PY -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m minidp.train \
  --n-layer 12 --n-head 12 --n-embd 768 --block-size 1024 \
  --batch-size $((16 * GPUS)) --steps 1500 --warmup-steps 100 --lr 6e-4 --min-lr 6e-5 \
  --compile --eval-every 500 --eval-batches 4 --sample-tokens 200 \
  --out-dir runs/gpu-check "$@"
echo "gpu-check: per-step figures in runs/gpu-check/metrics.jsonl"
