"""Dense, about 1B parameters (d 2048, 16 layers, 16 heads of 128, SwiGLU 5632, 65,536-token
vocabulary), RAE So400m arm, 4,096-token rows, 256 rows a step (1M tokens): a v5p-64.

  mmpretrain compile --config=configs/paper/dense_1b.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import paper_config  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-64"


def get_config(arg=None):
  return paper_config(arg, chips=32, batch=256, d_model=2048, layers=16, heads=16, mlp=5632)
