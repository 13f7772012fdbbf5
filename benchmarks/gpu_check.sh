#!/usr/bin/env bash
# The prepared device check of issue 14 (≤ 10 minutes on one H200): dode-run on EDM's DDPM++ CIFAR-10
# network at full size with random weights — 50K samples at NFE 10 in fp32 and in bf16 on one process,
# 10K on two processes sharing the GPU — with the FID feature time of each; optionally EDM's own
# generate.py on the same architecture (EDM_DIR=<a checkout of NVlabs/edm>; never copied into dode).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the repository root
#   EDM_DIR=/tmp/edm bash benchmarks/gpu_check.sh # also EDM's generate.py
#   bash benchmarks/gpu_check.sh --tiny --device cpu   # a dry run on the CPU (tiny network)
#
# Output: one JSON line per run and a JSON summary (images/s, FID seconds, ratios) on stdout; the
# whole log also goes to gpu_check.log (or $OUT/gpu_check.log when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_check.log"
{
  date -u
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  timeout "${GPU_CHECK_TIMEOUT:-570}" python benchmarks/gpu_check.py "$@"
} 2>&1 | tee "$log"
