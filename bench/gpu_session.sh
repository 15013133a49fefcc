#!/usr/bin/env bash
# The GPU checks of a session lent a CUDA machine, as one prepared command (README, "GPU
# checks"). That machine reaches no registry and has its own torch/transformers, not this
# project's other dependencies, so first, here:
#
#   bash scripts/gpu_wheels.sh        # the wheels it lacks -> .whl/ (git-ignored, ~58 MB)
#
# then on the device (device tool: run, carry [".whl"], timeout_s 580; ~9 minutes):
#
#   bash bench/gpu_session.sh
#
# 1. bench/train_gpu.py (make bench-gpu): the ~110M and ~0.9B models, MFU against a plain
#    compiled loop, one micro-batch each;
# 2. bench/agent_gpu.py: batched multi-turn collection and PPO with a ~115M model.
# Offline vLLM against the transformers backend cannot run there yet: vllm is not installed on
# that machine and its wheels are far over the 64 MiB a call may carry; the script says whether
# it is importable. Each log lands in $OUT (default ./gpu-out); every step runs under its own
# timeout, so one that hangs costs only its share.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers as t; print('torch', torch.__version__, t.__version__)" \
  2>&1 | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run it, keep its log, never stop the script
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name exit $?: $(tail -n 1 "$OUT/$name.log")"
}
python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -n 1 | tee -a "$OUT/gpu.txt"
# make bench-gpu's two models, each at the micro-batch that fits the time (the full sweep,
# three sizes of (b) and two of (a), each compiled twice, outlasts one device call)
step train_gpu_a 150 python3 bench/train_gpu.py --models a --micro-batches 32
step train_gpu_b 210 python3 bench/train_gpu.py --models b --micro-batches 8
step agent_gpu 150 python3 bench/agent_gpu.py
