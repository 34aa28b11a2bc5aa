"""The VAE baseline for the demo's frames (the visual-representation ablation's third arm).

  mmpretrain train-vae --config=configs/stages/vae_demo.py --workdir=runs/demo_vae
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = demo.get_config(arg)
  c.data.batch_size = 64           # images per step
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 0.0
  c.train.num_steps = 400
  c.train.log_every = 25
  return c
