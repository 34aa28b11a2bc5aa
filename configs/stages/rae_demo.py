"""Demo stage 2: freeze stage 1's encoder and train the RAE decoder on its latents.

  mmpretrain train-rae --config=configs/stages/rae_demo.py --workdir=runs/demo_rae \
      --config.rae.encoder=runs/demo_encoder/encoder
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from stage_base import stage_config  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = stage_config(arg, num_steps=400, learning_rate=1e-3, warmup_steps=30, weight_decay=0.0)
  c.rae.decoder = {"width": 192, "depth": 4, "num_heads": 4, "mlp_dim": 768}
  # The encoder's 128 channels per token, reduced to their 16 leading principal channels
  # (nearly all of the variance), whitened: the unified model then draws digits its captions ask
  # for (docs/benchmarks.md, "Generation from RAE latents").
  c.rae.latent_channels = 16
  return c
