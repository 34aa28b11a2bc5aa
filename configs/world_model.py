"""World model in miniature: the demo's unified model trained only on action-conditioned
video of an agent moving through an empty MiniGrid room, each action naming the direction
of its step so that every action changes the frame (data/sources.minigrid_moves), judged
on held-out rollouts against copying the last frame.

  make world-model     # prepare, train (~10 min on 2 CPU cores), rollout GIFs
  mmpretrain train --config=configs/world_model.py --workdir=runs/world_model
  mmpretrain sample --config=configs/world_model.py --workdir=runs/world_model --rollouts=4

A document is `<boi> 2 context frames <eoi> action <boi> next frame <eoi>`: MiniGrid draws
the agent's cell and heading, so one frame holds the whole state and two give the model a
second look. 64×64 RGB renders in 8×8-pixel patches make one token per grid cell. After
1200 steps the held-out rollouts put the agent in the right cell at every horizon up to 8
(copying the last frame: 0 / 0.16 / 0.13 at 1 / 4 / 8; docs/benchmarks.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import demo  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = demo.get_config(arg)
  c.data.mixture = {"text": 0.0, "image_text": 0.0, "video": 0.0, "action_video": 1.0}
  c.data.streams.action_video.datasets = {"minigrid_moves": 1.0}
  c.data.streams.action_video.context_frames = 2
  c.data.image_size, c.data.image_channels = 64, 3
  c.data.seq_len, c.data.max_frames = 416, 6   # two documents of 3 × 64 tokens + their text
  c.visual.representation, c.visual.checkpoint, c.visual.patch_size = "pixels", "", 8
  c.diffusion.time_shift = None          # the numel rule for 64×64×3 pixels
  # A step moves the agent: two tokens of 64 change. Weighing them 20× makes the move
  # ~40% of the flow loss instead of ~3% (docs/benchmarks.md, the world model).
  c.loss.frame_change_weight = 20.0
  c.train.num_steps = 1200
  c.checkpoint.every_steps = 400
  c.eval.every_steps = 400
  c.eval.classifier = ""
  c.eval.world_model_episodes = 32
  c.eval.world_model_horizons = (1, 4, 8)
  c.sample.captions = ()                 # nothing to draw from captions
  return c
