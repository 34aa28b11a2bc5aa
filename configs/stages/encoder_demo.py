"""Demo stage 1: a small SigLIP-style encoder learns MNIST digits from their captions
(sigmoid loss), the stand-in for a pretrained semantic encoder.

  mmpretrain train-encoder --config=configs/stages/encoder_demo.py --workdir=runs/demo_encoder
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = demo.get_config(arg)         # the demo's data: its tokenizer, image size and datasets
  c.data.batch_size = 64           # images per step
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.05
  c.train.num_steps = 800
  c.train.log_every = 25
  return c
