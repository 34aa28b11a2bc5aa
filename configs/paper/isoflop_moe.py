"""The paper's MoE IsoFLOP grid: the dense grid's budgets and widths
(configs/paper/isoflop_dense.py) with its MoE layers (configs/paper/moe_1b.py: 64
experts of granularity 16, 16 active, per-modality shared experts, sigmoid router), so
each width's active compute equals its dense twin's, and its capacity slots are filled
by one-hot matmuls in groups of 128 tokens. It runs on a v5p-128: on the dense grid's
v5p-64 its widest model would nearly fill a chip's HBM. No expert axis (fsdp 64), as in
moe_1b.py: exchanging the tokens over an expert axis (`--config.mesh.fsdp=16
--config.mesh.expert=4`) is slower for the widest model (docs/paper_compile.md, "Why
each run is laid out as it is", has the figures).

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
