"""Demo stage 2: freeze stage 1's encoder and train the RAE decoder on its latents.

  mmpretrain train-rae --config=configs/stages/rae_demo.py --workdir=runs/demo_rae \
      --config.rae.encoder=runs/demo_encoder/encoder
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = demo.get_config(arg)
  c.data.batch_size = 64           # images per step
  c.rae.decoder = {"width": 192, "depth": 4, "num_heads": 4, "mlp_dim": 768}
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 0.0
  c.train.num_steps = 400
  c.train.log_every = 25
  return c
