"""The 1B dense model as a Mixture-of-Transformers (each modality its own norms, attention
projections and FFN; attention global), on the same v5p-64.

  mmpretrain compile --config=configs/paper/mot_1b.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dense_1b  # pylint: disable=wrong-import-position

TOPOLOGY = dense_1b.TOPOLOGY


def get_config(arg=None):
  c = dense_1b.get_config(arg)
  c.model.mot = True
  return c
