"""The demo's representation stages share its data (tokenizer, frame size, datasets) and
train on batches of 64 images; each stage file sets its own schedule."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position


def stage_config(arg, *, num_steps: int, learning_rate: float, warmup_steps: int,
                 weight_decay: float):
  c = demo.get_config(arg)
  c.data.batch_size = 64                 # images per step
  c.optimizer.learning_rate = learning_rate
  c.optimizer.warmup_steps = warmup_steps
  c.optimizer.weight_decay = weight_decay
  c.train.num_steps = num_steps
  c.train.log_every = 25
  return c
