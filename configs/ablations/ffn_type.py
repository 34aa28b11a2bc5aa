"""Ablation: the FFN of the unified model at equal active FLOPs per token.

  dense         one SwiGLU of 1536 for every token
  modality_ffn  a text SwiGLU and a vision SwiGLU of 1536 (the paper's improved dense)
  moe           the MoE recipe of common.py (shared per-modality 768 + routed 4 × 192)

  for v in dense modality_ffn moe; do
    mmpretrain train --config=configs/ablations/ffn_type.py:$v --workdir=runs/ffn_type/$v
  done
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=wrong-import-position

VARIANTS = ("dense", "modality_ffn", "moe")


def get_config(arg=None):
  variant, runlocal = common.parse(arg, VARIANTS, "moe")
  c = common.get_base(runlocal)
  if variant == "modality_ffn":
    c.model.modality_ffn = True
  elif variant == "moe":
    common.moe_recipe(c)
  return c
