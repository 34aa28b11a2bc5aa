"""Dense, about 3B parameters (d 3072, 26 layers, 24 heads of 128, SwiGLU 8192), RAE So400m
arm, 4,096-token rows, 512 rows a step (2M tokens): a v5p-128. Eight rows a chip, like
the 1B run: at four the FSDP weight gathers, which do not shrink with the rows, cost more
than the rows' compute (docs/paper_compile.md, "Why each run is laid out as it is").

  mmpretrain compile --config=configs/paper/dense_3b.py --topology=v5p-128
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import paper_config  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-128"


def get_config(arg=None):
  return paper_config(arg, chips=64, batch=512, d_model=3072, layers=26, heads=24, mlp=8192)
