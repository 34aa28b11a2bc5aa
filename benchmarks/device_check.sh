#!/usr/bin/env bash
# The checks to run on a GPU or TPU host, in one go (about 5 minutes on one H100-class GPU;
# each step has its own time limit, 10 minutes in all): one JSON line per check.
#   pip install -e '.[cuda]'   # or '.[tpu]' on a TPU VM
#   bash benchmarks/device_check.sh
# 1. the devices; 2. train-step throughput and MFU in bf16 of a ~1B dense model against the
# device's bf16 peak (configs/bench/dense_1b.py); 3. attention at 8,192 tokens, dense mask
# against the chunked kernel (time and memory); 4. an MoE layer against its dense twin;
# 5. the paper's MoE dispatches and modality-FFN forms, one FFN each, against dense SwiGLU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -c 'import json, jax; d = jax.devices()
print(json.dumps({"check": "devices", "kind": d[0].device_kind, "count": len(d),
                  "platform": d[0].platform}))'
timeout 300 "$python" benchmarks/train_step.py --config=configs/bench/dense_1b.py --bf16_only \
    --steps=5 --warmup=2
timeout 90 "$python" benchmarks/attention.py --local --length=8192
timeout 90 "$python" benchmarks/moe_layer.py
timeout 120 "$python" benchmarks/ffn_local.py
