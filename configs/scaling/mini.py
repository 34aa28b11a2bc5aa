"""`make scaling-mini`: an IsoFLOP grid small enough for 2 CPU cores in well under an hour.

The demo's data (Shakespeare + MNIST caption→image / image→caption, raw pixel patches so
no representation stage is needed), 3 budgets × 4 widths (1–4 layers of 32-wide heads),
each run evaluated once at its end on held-out batches of both streams. What a grid this
small can and cannot show is in docs/scaling.md.

  mmpretrain sweep --config=configs/scaling/mini.py --out=runs/scaling_mini
  mmpretrain fit --results=runs/scaling_mini/results.jsonl
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position
from isoflop import scaling_section  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = demo.get_config(arg)
  c.visual.representation, c.visual.checkpoint, c.visual.patch_size = "pixels", "", 4
  c.data.mixture = {"text": 0.5, "image_text": 0.5}
  c.optimizer.learning_rate = 2e-3
  c.eval.batches = 8
  c.eval.classifier = ""
  c.scaling = scaling_section(budgets=(2e12, 6e12, 1.8e13), widths=(32, 64, 96, 128),
                              width_per_layer=32, head_dim=32, mlp_ratio=3.0, min_steps=100)
  return c
