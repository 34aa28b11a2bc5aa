"""dense_ref's model on mixed rows: 256 text tokens + four 32×32 images per 512 positions.

Each image is 64 latent tokens × 16 channels (4×4 pixel patches), bidirectional inside.

  python benchmarks/train_step.py --config=configs/bench/mixed_ref.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dense_ref  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = dense_ref.get_config(arg)
  c.data.image_size, c.data.image_channels, c.data.max_frames = 32, 1, 4
  c.visual.patch_size = 4
  c.bench = {"text_tokens_per_row": 256, "images_per_row": 4}
  return c
