"""Demo stage: the CNN that judges whether generated digits show the requested class
(config.eval.classifier of the demo points at its output).

  mmpretrain train-classifier --config=configs/stages/classifier_demo.py \
      --workdir=runs/demo_classifier
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from stage_base import stage_config  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = stage_config(arg, num_steps=400, learning_rate=2e-3, warmup_steps=40,
                   weight_decay=1e-4)
  c.data.batch_size = 128
  return c
