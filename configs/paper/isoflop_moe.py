"""The paper's MoE IsoFLOP grid: the dense grid's budgets and widths
(configs/paper/isoflop_dense.py) with its MoE layers (configs/paper/moe_1b.py: 64
experts of granularity 16, 16 active, per-modality shared experts, sigmoid router), so
each width's active compute equals its dense twin's. It runs on a v5p-128 (fsdp 16 ×
expert 4; a 4×4×4 slice's mesh axes must be products of 4s): on the dense grid's v5p-64
its widest model holds 95.8 GB a chip, beyond the 10% of HBM a run should keep free.

  mmpretrain sweep --config=configs/paper/isoflop_moe.py --out=gs://BUCKET/isoflop_moe \
      --launcher=tpu
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import isoflop_dense  # pylint: disable=wrong-import-position
import moe_1b  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-128"


def get_config(arg=None):
  c = isoflop_dense.get_config(arg)
  c.model.moe = moe_1b.get_config(arg).model.moe
  c.mesh.fsdp, c.mesh.expert = 16, 4
  return c
