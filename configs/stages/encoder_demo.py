"""Demo stage 1: a small SigLIP-style encoder learns MNIST digits from their captions
(sigmoid loss), the stand-in for a pretrained semantic encoder.

  mmpretrain train-encoder --config=configs/stages/encoder_demo.py --workdir=runs/demo_encoder
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from stage_base import stage_config  # pylint: disable=wrong-import-position


def get_config(arg=None):
  return stage_config(arg, num_steps=800, learning_rate=3e-4, warmup_steps=100,
                      weight_decay=0.05)
