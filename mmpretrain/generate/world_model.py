"""World modeling with the unified model: rollouts, their metrics and GIFs.

A rollout predicts frames one at a time, in the document layout the model trained on:
the last `context` frames (the real ones first, then its own predictions, kept as latent
tokens) and, for action-conditioned worlds, the action taken as text
(`[mission] <boi> context <eoi> action <boi> [next]`); without actions it continues a
video (`<boi> context [next]`, block-causal frames). Each next frame is a visual block
denoised against the KV cache of its prefix (sample.make_block_sampler).

Metrics compare predictions with the true frames at several horizons: pixel MSE, PSNR,
and whether the MiniGrid agent stands in the same cell (`agent_cell` locates it by its
red triangle; exact on real renders, tests/test_world_model.py).
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mmpretrain import image_files, pixels, storage
from mmpretrain.data import documents as docs
from mmpretrain.data import pipeline, records, streams
from mmpretrain.data.sources import MINIGRID_CELLS
from mmpretrain.generate import sample
from mmpretrain.tokenizers.text import special_ids

# The agent triangle as MiniGrid draws it in a unit cell pointing right (direction 0).
AGENT_TRIANGLE = ((0.12, 0.19), (0.87, 0.50), (0.12, 0.81))
AGENT_RGB = (255, 0, 0)


def rollout_document(tok, spec, context: int, action: str | None, mission: str = ""):
  """The prompt document for one predicted frame (frames are placeholders: the sampler
  reads the context as latent tokens)."""
  blank = np.zeros((context, *spec.frame_shape), np.uint8)
  specials = special_ids(tok)
  if action is None:
    return [docs.text_segment([tok.bos_id, tok.boi_id], False),
            docs.VisualSegment(blank, generate=False), docs.VisualSegment(blank[:1], True),
            docs.text_segment([tok.eoi_id, tok.eos_id], [False, True])]
  return docs.action_video_document(blank, tok.encode(action), blank[0],
                                    tok.encode(mission) if mission else [], **specials)


class Rollout:
  """rollout(params, frames, actions, rng) -> predicted frames uint8 [B, H, h, w, c]:
  `frames` uint8 [B, context, h, w, c] are the real context, `actions` [B][H] the action
  text taken before each predicted frame (None: video continuation for `horizon` frames).
  """

  def __init__(self, run, tok, context: int):
    self.run, self.tok, self.spec, self.context = run, tok, run.spec, context
    self.sample_block = sample.make_block_sampler(run, guided=False)
    self.decode = sample.make_frame_decoder(run)

  def __call__(self, params, frames, actions=None, missions=None, rng=None, horizon=None):
    batch = len(frames)
    if frames.shape[1] != self.context:
      raise ValueError(f"{frames.shape[1]} context frames given; this rollout was built for "
                       f"{self.context} (config.data.streams.action_video.context_frames)")
    horizon = len(actions[0]) if actions is not None else horizon
    missions = missions or [""] * batch
    window = self.run.latent_tokens(frames)         # [B, context·T, D]
    tokens_per_frame = window.shape[1] // self.context
    rng = jax.random.key(0) if rng is None else rng
    predicted = []
    for step in range(horizon):
      prompt = sample.block_prompt(
          [rollout_document(self.tok, self.spec, self.context,
                            None if actions is None else actions[b][step], missions[b])
           for b in range(batch)], self.spec)
      frame = self.sample_block(params, prompt, window, jax.random.fold_in(rng, step))
      predicted.append(frame)
      window = jnp.concatenate([window[:, tokens_per_frame:], frame], axis=1)
    return np.asarray(self.decode(jnp.stack(predicted, axis=1)))


def agent_templates(cell: int, supersample: int = 8) -> np.ndarray:
  """The agent's cell for its 4 directions, rendered at `cell` pixels by area averaging a
  supersampled triangle on black: float [4, cell, cell, 3]."""
  side = cell * supersample
  centers = (np.arange(side) + 0.5) / side
  y, x = np.meshgrid(centers, centers, indexing="ij")
  (ax, ay), (bx, by), (cx, cy) = AGENT_TRIANGLE
  templates = []
  for direction in range(4):          # MiniGrid turns the triangle by 90° per direction
    angle = -0.5 * math.pi * direction
    xr = 0.5 + (x - 0.5) * math.cos(angle) - (y - 0.5) * math.sin(angle)
    yr = 0.5 + (x - 0.5) * math.sin(angle) + (y - 0.5) * math.cos(angle)
    sides = [(qx - px) * (yr - py) - (qy - py) * (xr - px)
             for (px, py), (qx, qy) in (((ax, ay), (bx, by)), ((bx, by), (cx, cy)),
                                        ((cx, cy), (ax, ay)))]
    inside = np.all([s >= 0 for s in sides], axis=0) | np.all([s <= 0 for s in sides], axis=0)
    image = np.where(inside[..., None], np.asarray(AGENT_RGB, np.float32), 0.0)
    templates.append(image.reshape(cell, supersample, cell, supersample, 3).mean((1, 3)))
  return np.stack(templates)


def agent_cell(frames: np.ndarray, cells: int = MINIGRID_CELLS) -> np.ndarray:
  """(row, column) of the MiniGrid agent in uint8 RGB frames [..., S, S, 3]: the cell
  closest to an agent template (the cell's top/left grid lines ignored) -> int [..., 2]."""
  size = frames.shape[-2]
  if size % cells or frames.shape[-1] != 3:
    raise ValueError(f"frames of shape {frames.shape[-3:]}: need RGB frames whose side is a "
                     f"multiple of {cells} cells (data.image_channels=3)")
  cell = size // cells
  grid = frames.astype(np.float32).reshape(*frames.shape[:-3], cells, cell, cells, cell, 3)
  grid = np.moveaxis(grid, -4, -3)                          # [..., rows, cols, cell, cell, 3]
  templates = agent_templates(cell)
  distance = ((grid[..., None, 1:, 1:, :] - templates[:, 1:, 1:, :]) ** 2).sum((-1, -2, -3))
  flat = distance.min(-1).reshape(*frames.shape[:-3], cells * cells).argmin(-1)
  return np.stack(np.divmod(flat, cells), axis=-1)


def frame_mse(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-frame mean squared error of uint8 frames in [0, 1] units: [..., H, W, C] -> [...]."""
  diff = predicted.astype(np.float64) / 255.0 - target.astype(np.float64) / 255.0
  return (diff ** 2).mean((-1, -2, -3))


def horizon_metrics(predicted, target, horizons) -> dict[str, float]:
  """MSE, PSNR and agent-cell accuracy at each horizon (1-based) of rollouts
  [B, H, S, S, 3] against the true frames."""
  results = {}
  for h in horizons:
    mse = frame_mse(predicted[:, h - 1], target[:, h - 1])
    same_cell = (agent_cell(predicted[:, h - 1]) == agent_cell(target[:, h - 1])).all(-1)
    results.update({f"mse@{h}": float(mse.mean()),
                    f"psnr@{h}": float(np.mean(pixels.psnr(mse, 1.0))),
                    f"agent_accuracy@{h}": float(same_cell.mean())})
  return results


def held_out_episodes(config, tok, count: int, length: int):
  """The first `count` held-out episodes with at least `length` frames of the action-video
  stream's first dataset: (frames uint8 [count, length, S, S, C], actions
  [count][length - 1], missions)."""
  dataset = next(iter(config.data.streams.action_video.datasets))
  ctx = streams.StreamContext(config, tok, "action_video")
  fields = config.data.datasets[dataset].fields
  frames, actions, missions = [], [], []
  for record in pipeline.dataset_records(config, dataset, config.eval.split):
    if isinstance(record, records.Unreadable):
      continue
    record = pipeline.canonical(record, fields, ("frames", "actions"), dataset)
    if len(record["frames"]) < length:
      continue
    frames.append(ctx.frames(record["frames"][:length]))
    actions.append([streams.as_text(a) for a in record["actions"][:length - 1]])
    missions.append(streams.as_text(record.get("mission", b"")))
    if len(frames) == count:
      return np.stack(frames), actions, missions
  raise ValueError(f"only {len(frames)} {config.eval.split} episodes of {dataset} have "
                   f"{length} frames; lower config.eval.world_model_episodes")


def save_gif(path: str, frames: np.ndarray, scale: int = 4, milliseconds: int = 300) -> None:
  """uint8 frames [T, H, W, C] -> an endlessly looping GIF, upscaled for viewing."""
  images = [image_files.to_pil(f) for f in frames]
  images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
  storage.save_image(path, images[0], save_all=True, append_images=images[1:],
                     duration=milliseconds, loop=0)


def comparison_strip(real: np.ndarray, predicted: np.ndarray) -> np.ndarray:
  """Per time step, the real frame above the predicted one: [T, 2H + 1, W, C] (a white
  line between), for GIFs of rollouts against the truth."""
  line = np.full_like(real[:, :1], 255)
  return np.concatenate([real, line, predicted], axis=1)


def rollout_strip(episode: np.ndarray, predicted: np.ndarray, context: int) -> np.ndarray:
  """One episode's true frames above its context frames followed by the rollout."""
  return comparison_strip(episode, np.concatenate([episode[:context], predicted]))


def write_rollouts(config, tok, run, params, episodes: int, horizon: int, actions: bool,
                   output: str, tag: str, write: bool = True) -> list[str]:
  """GIFs of rollouts of held-out MiniGrid episodes (the truth above the prediction, the
  context frames first), action-conditioned or as video continuation; their paths. Every
  process of a job rolls out (the sampler spans their devices); `write`: this one also
  writes the GIFs."""
  context = config.data.streams.action_video.context_frames
  frames, episode_actions, missions = held_out_episodes(config, tok, episodes,
                                                        context + horizon)
  rollout = Rollout(run, tok, context)
  predicted = rollout(params, frames[:, :context],
                      [a[context - 1:] for a in episode_actions] if actions else None,
                      missions, jax.random.key(config.seed), horizon=horizon)
  paths = []
  for i in range(episodes):
    path = os.path.join(output, f"rollout_{tag}_{'actions' if actions else 'video'}_{i}.gif")
    if write:
      save_gif(path, rollout_strip(frames[i], predicted[i], context))
    paths.append(path)
  return paths
