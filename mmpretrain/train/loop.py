"""The training loop: data -> jitted step -> metrics; samples and plots at the end."""
import contextlib
import json
import os
import signal
import time

import jax
import matplotlib
import numpy as np
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from mmpretrain import config as config_lib  # pylint: disable=wrong-import-position
from mmpretrain import sample as sample_lib  # pylint: disable=wrong-import-position
from mmpretrain import sharding  # pylint: disable=wrong-import-position
from mmpretrain.analysis.experts import RoutingLog  # pylint: disable=wrong-import-position
from mmpretrain.batch import SKIP_FIELDS  # pylint: disable=wrong-import-position
from mmpretrain.data import pipeline  # pylint: disable=wrong-import-position
from mmpretrain.train.checkpoint import RunCheckpoints  # pylint: disable=wrong-import-position
from mmpretrain.train.metrics import MetricWriter, tagged  # pylint: disable=wrong-import-position
from mmpretrain.model.transformer import is_moe_layer  # pylint: disable=wrong-import-position
from mmpretrain.train.step import Trainer  # pylint: disable=wrong-import-position

PLOTTED = ("text_loss", "flow_loss", "text_bits_per_byte")


def plot_history(history: list[dict], path: str) -> None:
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3))
  steps = [h["step"] for h in history]
  for ax, name in zip(axes, PLOTTED):
    ax.plot(steps, [h[name] for h in history])
    ax.set_title(name)
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_samples(trainer, state, tok, config, workdir: str, writer: MetricWriter) -> str:
  """Generates images for config.sample.captions and writes a PNG grid (one row per caption)."""
  spec = pipeline.row_spec(config)
  captions = [c for c in config.sample.captions for _ in range(config.sample.images_per_caption)]
  rows = sample_lib.generation_rows(tok, captions, spec)
  sampler = sample_lib.make_image_sampler(trainer, spec)
  images = np.asarray(sampler(state.params, rows, jax.random.key(config.seed)))
  grid = sample_lib.image_grid(images, columns=config.sample.images_per_caption)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  path = os.path.join(workdir, "samples", f"images_step{int(state.step)}.png")
  grid.save(path)
  writer.image(int(state.step), "samples/caption_to_image", np.asarray(grid))
  return path


@contextlib.contextmanager
def preemption_notice():
  """A flag that SIGTERM (what a preempted TPU VM gets) sets instead of killing the run."""
  notice = {"requested": False}
  def on_sigterm(signum, frame):
    del signum, frame
    notice["requested"] = True
  previous = signal.signal(signal.SIGTERM, on_sigterm)
  try:
    yield notice
  finally:
    signal.signal(signal.SIGTERM, previous)


class NonFiniteLoss(FloatingPointError):
  """The loss or gradient went non-finite under train.nonfinite='stop'."""


def train(config, workdir: str) -> dict:
  """Trains to config.train.num_steps in `workdir`, resuming from its newest complete
  checkpoint; returns the first and last metrics of this invocation (and the sample path).

  SIGTERM saves a checkpoint after the current step and returns early.
  """
  config_lib.validate(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  tok = pipeline.load_tokenizer(config)
  batches = pipeline.make_batches(config, tok, shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  mesh = sharding.make_mesh(config.mesh)
  trainer = Trainer(config, tok.byte_lengths(), mesh)
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  start, state = checkpoints.restore_newest(trainer.abstract_state(), batches,
                                           config.checkpoint.fallback)
  if state is None:
    state = trainer.init_state(config.seed)
  writer = MetricWriter(workdir, enabled=is_main)
  moe_layers = [i for i in range(config.model.num_layers) if is_moe_layer(config.model, i)]
  routing = (RoutingLog(workdir, moe_layers, config.analysis.expert_threshold)
             if moe_layers and is_main else None)

  history, tokens_seen, last_time = [], 0, time.time()
  skipped = dict.fromkeys(SKIP_FIELDS, 0)
  nonfinite = 0
  num_steps, log_every = config.train.num_steps, config.train.log_every
  bar = tqdm(range(start, num_steps), desc="train", disable=not is_main, dynamic_ncols=True,
             initial=start, total=num_steps)
  try:
    with preemption_notice() as preemption:
      for step in bar:
        batch = next(batches)
        for field in SKIP_FIELDS:
          skipped[field] += int(batch.pop(field).sum())
        tokens_seen += int((batch["segment_ids"] > 0).sum())
        state, metrics = trainer.step(state, sharding.global_batch(batch, mesh, config.mesh.rules))
        step_routing = metrics.pop("moe_routing", None)   # [MoE layers, token kinds, experts]
        if routing is not None:
          routing.add(step_routing)
        nonfinite = nonfinite + metrics.pop("nonfinite")   # on device: no wait per step
        save = checkpoints.due(step + 1, num_steps) or preemption["requested"]
        if save or step % log_every == 0 or step == num_steps - 1:
          skipped_updates = int(nonfinite)
          if skipped_updates and config.train.nonfinite == "stop":
            raise NonFiniteLoss(
                f"non-finite loss or gradient by step {step} ({skipped_updates} updates "
                f"skipped); the newest checkpoint in {checkpoints.directory} holds the last "
                "good state. Lower the learning rate or set train.nonfinite='skip'")
        if step % log_every == 0 or step == num_steps - 1:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          now = time.time()
          metrics["tokens_per_s"] = tokens_seen / max(now - last_time, 1e-9)
          metrics.update(skipped)
          metrics["nonfinite_updates_skipped"] = skipped_updates
          tokens_seen, last_time = 0, now
          history.append({"step": step, **metrics})
          writer.scalars(step, tagged(metrics))
          if routing is not None:
            writer.scalars(step, routing.flush(step))
          bar.set_postfix(text=f"{metrics['text_loss']:.3f}", flow=f"{metrics['flow_loss']:.3f}",
                          bpb=f"{metrics['text_bits_per_byte']:.2f}",
                          tok_s=f"{metrics['tokens_per_s']:.0f}")
        if save:
          checkpoints.save(step + 1, state, batches, config)
        if preemption["requested"]:
          break
  finally:             # an error must not cut a background save short
    checkpoints.close()

  summary = {"first": history[0] if history else None, "last": history[-1] if history else None,
             "resumed_from": start, "preempted": preemption["requested"]}
  if is_main and not preemption["requested"]:
    summary["samples"] = write_samples(trainer, state, tok, config, workdir, writer)
    if history:
      os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
      plot_history(history, os.path.join(workdir, "plots", "losses.png"))
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  writer.close()
  return summary
