"""Ablation: expert granularity G ∈ {1, 2, 4, 8, 16} at fixed active and total parameters.

G splits each of the 8 routed experts of hidden 768 into G experts of 768/G and routes
each token to G of the 8·G: FLOPs and parameters stay fixed while routing gets finer.
(The paper: finer is better up to G = 16, where it saturates.)

  for g in 1 2 4 8 16; do
    mmpretrain train --config=configs/ablations/granularity.py:$g --workdir=runs/granularity/g$g
  done
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # pylint: disable=wrong-import-position

VARIANTS = ("1", "2", "4", "8", "16")


def get_config(arg=None):
  variant, runlocal = common.parse(arg, VARIANTS, "4")
  c = common.moe_recipe(common.get_base(runlocal))
  c.model.moe.granularity = int(variant)
  return c
