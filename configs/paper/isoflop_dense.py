"""The paper's dense IsoFLOP grid at its own scale: budgets of 10²⁰–10²² training FLOPs ×
widths of 512–3,072 (depth = width / 128, heads of 128, SwiGLU 2.75 × width), each run
on 4,096-token rows of text and image–text with the RAE So400m arm, 256 rows a step.

`mmpretrain sweep` expands it (scaling/sweep.py); `make compile-paper` compiles its widest
model, the one that needs the most memory, for the v5p-64 every run of the grid uses.

  mmpretrain sweep --config=configs/paper/isoflop_dense.py --out=gs://BUCKET/isoflop_dense \
      --launcher=tpu
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scaling"))
from isoflop import scaling_section  # pylint: disable=wrong-import-position
from paper_common import paper_config  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-64"


def get_config(arg=None):
  c = paper_config(arg, chips=32, batch=256, d_model=2048, layers=16, heads=16, mlp=5632)
  c.optimizer.schedule = "cosine"
  c.scaling = scaling_section(
      budgets=(1e20, 3e20, 1e21, 3e21, 1e22),
      widths=(512, 768, 1024, 1536, 2048, 2560, 3072),
      width_per_layer=128, head_dim=128, mlp_ratio=2.75, min_steps=2000)
  return c
