"""Ablation: total routed experts at a fixed 16 active (granularity 16).

Each token runs 16 experts of hidden 768/16 = 48 (the same active FLOPs as every other MoE
ablation) chosen from 32 … 1008; only the parameter count grows. (The paper: more total
experts keep improving.)

  for e in 32 64 128 256 512 1008; do
    mmpretrain train --config=configs/ablations/total_experts.py:$e --workdir=runs/total/e$e
  done
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=wrong-import-position

VARIANTS = ("32", "64", "128", "256", "512", "1008")
GRANULARITY = 16


def get_config(arg=None):
  variant, runlocal = common.parse(arg, VARIANTS, "64")
  c = common.moe_recipe(common.get_base(runlocal))
  c.model.moe.granularity = GRANULARITY
  c.model.moe.num_experts = int(variant) // GRANULARITY     # before granularity
  return c
