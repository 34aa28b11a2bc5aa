"""The VAE baseline for the demo's frames (the visual-representation ablation's third arm).

  mmpretrain train-vae --config=configs/stages/vae_demo.py --workdir=runs/demo_vae
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from stage_base import stage_config  # pylint: disable=wrong-import-position


def get_config(arg=None):
  return stage_config(arg, num_steps=400, learning_rate=1e-3, warmup_steps=30, weight_decay=0.0)
