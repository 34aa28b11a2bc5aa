"""MoE step time vs the dense model of equal active FLOPs, in one process.

  python benchmarks/moe_overhead.py [--rounds=3 --steps=5 --warmup=2]

Prints one JSON line: step seconds of configs/bench/dense_ref.py, of configs/bench/moe_ref.py
(8 experts × 768, top-2) and of its fine-grained variant (32 × 192, top-8), the ratios to
dense (target ≤ 1.25), and per MoE config the drop rate and the load balance (max expert
load ÷ mean) of the last step. The three are measured in turn, `rounds` times: a ratio is
the median of the per-round ratios, so a slow spell of this shared VM, which moves step
times by ~10% over minutes, lands on both sides of it.
"""
import argparse
import json
import os
import subprocess
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from mmpretrain.config import load_config, validate  # pylint: disable=wrong-import-position
from mmpretrain.hostalloc import relaunch_with_jemalloc  # pylint: disable=wrong-import-position
from train_step import measure  # pylint: disable=wrong-import-position
import smoke  # pylint: disable=wrong-import-position,wrong-import-order


CONFIGS = {"dense": ("dense_ref.py", None), "moe": ("moe_ref.py", None),
           "moe_fine": ("moe_ref.py", "fine")}


def bench_config(name: str, tiny: bool = False):
  path, arg = CONFIGS[name]
  config = validate(load_config(os.path.join(ROOT, "configs", "bench", path), arg))
  return smoke.tiny(config) if tiny else config


def measure_one(name: str, steps: int, warmup: int, tiny: bool) -> dict:
  result = measure(bench_config(name, tiny), steps, warmup)
  out = {"step_s": result["step_s"]}
  if name != "dense":
    out["drop_rate"] = float(result["metrics"]["moe_drop_rate"])
    out["max_load_over_mean"] = float(result["metrics"]["moe_max_load_over_mean"])
  return out


def _measure_in_subprocess(name: str, args) -> dict:
  # One process per config: jemalloc keeps each model's high-water memory, and three
  # models' worth in one process exceeds this machine's RAM.
  run = subprocess.run([sys.executable, os.path.abspath(__file__), f"--only={name}",
                        f"--steps={args.steps}", f"--warmup={args.warmup}"]
                       + (["--smoke"] if args.smoke else []),
                       capture_output=True, text=True, check=True)
  return json.loads(run.stdout.strip().splitlines()[-1])


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3, help="dense, moe, fine measured in turn")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--only", choices=list(CONFIGS), help="measure one config (internal)")
  smoke.add_flag(parser)
  args = parser.parse_args()
  if args.smoke:
    args.rounds, args.steps, args.warmup = 1, 1, 0
  if args.only:
    print(json.dumps(measure_one(args.only, args.steps, args.warmup, args.smoke)))
    return
  rounds = [{name: _measure_in_subprocess(name, args) for name in CONFIGS}
            for _ in range(args.rounds)]
  dense = [r["dense"]["step_s"] for r in rounds]
  out = {"devices": str(jax.devices()[0].device_kind), "rounds": args.rounds,
         "dense_step_s": round(float(np.median(dense)), 3)}
  for name in ("moe", "moe_fine"):
    ratios = [r[name]["step_s"] / r["dense"]["step_s"] for r in rounds]
    out[f"{name}_step_s"] = round(float(np.median([r[name]["step_s"] for r in rounds])), 3)
    out[f"{name}_vs_dense"] = round(float(np.median(ratios)), 3)
    out[f"{name}_vs_dense_per_round"] = [round(x, 3) for x in ratios]
    out[f"{name}_drop_rate"] = round(rounds[-1][name]["drop_rate"], 4)
    out[f"{name}_max_load_over_mean"] = round(rounds[-1][name]["max_load_over_mean"], 3)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
