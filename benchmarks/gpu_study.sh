#!/bin/bash
# One call on a GPU machine (H200, 16 cores, ~9 min): the determinism probe of gpu_check.py
# and the optimizer study's `small` at its full token budget (H = 10), five runs side by side.
# Usage: OUT=folder bash benchmarks/gpu_study.sh
[ -d .whl ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; }  # wheels the device image lacks
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
(timeout 420 python3 benchmarks/gpu_check.py --deterministic --parts repeat fsdp2 \
   --out $OUT/gpu_check_deterministic.json > $OUT/gpu_check_deterministic.log 2>&1) &
i=0
for name in "SparseLoCo base" "DiLoCo base" "DDP base" "DiLoCo lr 1 μ 0" "SparseLoCo inner_reset"; do
  i=$((i+1))
  (timeout 530 python3 benchmarks/optimizer_study.py --grid full --model small --inner-steps 10 \
     --device cuda --threads 2 --only "$name" --out $OUT/small_$i.jsonl > $OUT/small_$i.log 2>&1) &
done
wait
tail -n 3 $OUT/*.log
