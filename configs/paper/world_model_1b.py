"""The 1B dense model on the paper's full mixture at 8,192-token rows: text, image–text,
video and action-conditioned video (4 context frames before each action, the world-model
setup), up to 24 frames of 256 tokens a row, 128 rows a step (1M tokens), on a v5p-64.

  mmpretrain compile --config=configs/paper/world_model_1b.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import paper_config  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-64"


def get_config(arg=None):
  c = paper_config(arg, chips=32, batch=128, d_model=2048, layers=16, heads=16, mlp=5632,
                   seq_len=8192)
  c.data.mixture = {"text": 0.25, "image_text": 0.25, "video": 0.25, "action_video": 0.25}
  c.data.streams.action_video.context_frames = 4
  c.data.max_frames = 24
  # At 8k tokens chunks of 1,024 cost the step less than 512: fewer passes over the
  # running outputs per score (docs/paper_compile.md has the figures).
  c.model.attention_chunk = 1024
  return c
