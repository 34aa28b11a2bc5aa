"""Dense, about 3B parameters (d 3072, 26 layers, 24 heads of 128, SwiGLU 8192), RAE So400m
arm, 4,096-token rows, 256 rows a step: a v5p-128.

  mmpretrain compile --config=configs/paper/dense_3b.py --topology=v5p-128
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import paper_config  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-128"


def get_config(arg=None):
  return paper_config(arg, chips=64, batch=256, d_model=3072, layers=26, heads=24, mlp=8192)
