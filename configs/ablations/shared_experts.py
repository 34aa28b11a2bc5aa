"""Ablation: the shared (always-on) experts at equal active FLOPs.

  none          no shared expert; each token takes 2× the routed experts instead (8 of 32)
  global        one shared expert of 768 for every token
  per_modality  a text shared expert for text tokens, a vision one for visual tokens
                (the paper's best)

  for s in none global per_modality; do
    mmpretrain train --config=configs/ablations/shared_experts.py:$s --workdir=runs/shared/$s
  done
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=wrong-import-position

VARIANTS = ("none", "global", "per_modality")


def get_config(arg=None):
  variant, runlocal = common.parse(arg, VARIANTS, "per_modality")
  c = common.moe_recipe(common.get_base(runlocal))
  c.model.moe.shared_experts = variant
  if variant == "none":       # the shared expert's FLOPs go to routed experts instead
    c.model.moe.experts_per_token *= 2
  return c
