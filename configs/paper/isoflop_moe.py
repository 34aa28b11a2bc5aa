"""The paper's MoE IsoFLOP grid: the dense grid's budgets and widths
(configs/paper/isoflop_dense.py) with its MoE layers (configs/paper/moe_1b.py: 64
experts of granularity 16, 16 active, per-modality shared experts, sigmoid router), so
each width's active compute equals its dense twin's.

  mmpretrain sweep --config=configs/paper/isoflop_moe.py --out=gs://BUCKET/isoflop_moe \
      --launcher=tpu
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import isoflop_dense  # pylint: disable=wrong-import-position
import moe_1b  # pylint: disable=wrong-import-position

TOPOLOGY = isoflop_dense.TOPOLOGY


def get_config(arg=None):
  c = isoflop_dense.get_config(arg)
  c.model.moe = moe_1b.get_config(arg).model.moe
  c.mesh.fsdp, c.mesh.expert = 4, 8
  return c
