"""The pixel arm of the representation ablation on the 1B dense model: 224-px RGB images
in 14×14 patches, 256 tokens of 588 values each, as many tokens as the RAE arm.

  mmpretrain compile --config=configs/paper/pixels_1b.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dense_1b  # pylint: disable=wrong-import-position

TOPOLOGY = dense_1b.TOPOLOGY


def get_config(arg=None):
  c = dense_1b.get_config(arg)
  c.visual.representation, c.visual.checkpoint, c.visual.patch_size = "pixels", "", 14
  c.visual.cached_latents = False        # pixels are their own latents
  return c
