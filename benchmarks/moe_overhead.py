"""MoE step time vs the dense model of equal active FLOPs, in one process.

  python benchmarks/moe_overhead.py [--steps=5 --warmup=2]

Prints one JSON line: step seconds of configs/bench/dense_ref.py, of configs/bench/moe_ref.py
(8 experts × 768, top-2) and of its fine-grained variant (32 × 192, top-8), the ratios to
dense (target ≤ 1.25), and per MoE config the dispatch used, the drop rate and the load
balance (max expert load ÷ mean) of the last step.
"""
import argparse
import json
import os
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from mmpretrain.config import load_config, validate  # pylint: disable=wrong-import-position
from mmpretrain.hostalloc import relaunch_with_jemalloc  # pylint: disable=wrong-import-position
from train_step import measure  # pylint: disable=wrong-import-position


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  bench = os.path.join(ROOT, "configs", "bench")
  configs = {"dense": validate(load_config(os.path.join(bench, "dense_ref.py"))),
             "moe": validate(load_config(os.path.join(bench, "moe_ref.py"))),
             "moe_fine": validate(load_config(os.path.join(bench, "moe_ref.py"), "fine"))}
  out = {"devices": str(jax.devices()[0].device_kind)}
  for name, config in configs.items():
    result = measure(config, args.steps, args.warmup)
    out[f"{name}_step_s"] = round(result["step_s"], 3)
    if name != "dense":
      metrics = result["metrics"]
      out[f"{name}_vs_dense"] = round(result["step_s"] / out["dense_step_s"], 3)
      out[f"{name}_drop_rate"] = round(float(metrics["moe_drop_rate"]), 4)
      out[f"{name}_max_load_over_mean"] = round(float(metrics["moe_max_load_over_mean"]), 3)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
