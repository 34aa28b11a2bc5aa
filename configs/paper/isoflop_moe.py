"""The paper's MoE IsoFLOP grid: the dense grid's budgets and widths
(configs/paper/isoflop_dense.py) with its MoE layers (configs/paper/moe_1b.py: 64
experts of granularity 16, 16 active, per-modality shared experts, sigmoid router), so
each width's active compute equals its dense twin's, and its capacity slots are filled
by one-hot matmuls in groups of 128 tokens. It runs on a v5p-128: on the dense grid's
v5p-64 its widest model would hold more than 90% of a chip's HBM. No expert axis (fsdp
64), as in moe_1b.py: for the widest model the cost model gives 2.41 s a step (MFU 0.33)
against 2.94 s (0.27) with the tokens exchanged over an expert axis of 4 (fsdp 16 ×
expert 4, `--config.mesh.fsdp=16 --config.mesh.expert=4`).

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
  c.mesh.fsdp, c.mesh.expert = 64, 1
  return c
