"""The training loop: data -> jitted step -> metrics; samples and plots at the end."""
import jax
import matplotlib
import numpy as np
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from mmpretrain import config as config_lib  # pylint: disable=wrong-import-position
from mmpretrain import storage  # pylint: disable=wrong-import-position
from mmpretrain.generate import sample as sample_lib  # pylint: disable=wrong-import-position
from mmpretrain import distributed, sharding  # pylint: disable=wrong-import-position
from mmpretrain.analysis.experts import RoutingLog  # pylint: disable=wrong-import-position
from mmpretrain.batch import SKIP_FIELDS  # pylint: disable=wrong-import-position
from mmpretrain.data import pipeline  # pylint: disable=wrong-import-position
# pylint: disable-next=wrong-import-position
from mmpretrain.train.checkpoint import BestParams, RunCheckpoints
from mmpretrain.train.evaluate import Evaluator  # pylint: disable=wrong-import-position
from mmpretrain.train.metrics import MetricWriter, tagged  # pylint: disable=wrong-import-position
from mmpretrain.model.transformer import is_moe_layer  # pylint: disable=wrong-import-position
from mmpretrain.train.step import Trainer  # pylint: disable=wrong-import-position
# pylint: disable-next=wrong-import-position
from mmpretrain.train.throughput import ProfileWindow, Throughput

PLOTTED = ("text_loss", "flow_loss", "text_bits_per_byte")


def plot_history(history: list[dict], path: str) -> None:
  """Text CE, flow MSE and bits per byte over the logged steps, as a PNG at `path`."""
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3))
  steps = [h["step"] for h in history]
  for ax, name in zip(axes, PLOTTED):
    ax.plot(steps, [h[name] for h in history])
    ax.set_title(name)
    ax.set_xlabel("step")
  fig.tight_layout()
  storage.save_figure(path, fig)
  plt.close(fig)


def write_samples(trainer, state, tok, config, workdir: str, writer: MetricWriter) -> str | None:
  """Generates images for config.sample.captions (none: nothing) and writes a PNG grid
  (one row per caption).

  Every process runs the sampler (its params are sharded over all of them); process 0
  writes the grid and returns its path."""
  if not config.sample.captions:
    return None
  spec = pipeline.row_spec(config)
  captions = [c for c in config.sample.captions for _ in range(config.sample.images_per_caption)]
  sampler = sample_lib.make_image_sampler(trainer, tok, spec)
  images = np.asarray(sampler(state.params, captions, jax.random.key(config.seed)))
  if jax.process_index() != 0:
    return None
  grid = sample_lib.image_grid(images, columns=config.sample.images_per_caption)
  storage.makedirs(storage.join(workdir, "samples"))
  path = storage.join(workdir, "samples", f"images_step{int(state.step)}.png")
  storage.save_image(path, grid)
  writer.image(int(state.step), "samples/caption_to_image", np.asarray(grid))
  return path


class NonFiniteLoss(FloatingPointError):
  """The loss or gradient went non-finite under train.nonfinite='stop'."""


def train(config, workdir: str) -> dict:
  """Trains to config.train.num_steps in `workdir`, resuming from its newest complete
  checkpoint; returns the first and last metrics of this invocation (and the sample path).

  SIGTERM saves a checkpoint after the current step and returns early.
  """
  config_lib.validate(config)
  is_main = jax.process_index() == 0
  storage.makedirs(workdir)
  if is_main:
    storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  tok = pipeline.load_tokenizer(config)
  mesh = sharding.make_mesh(config.mesh)
  rows = sharding.process_rows(config.data.batch_size, mesh, config.mesh.rules)
  batches = pipeline.make_batches(config, tok, rows=rows)
  trainer = Trainer(config, tok.byte_lengths(), mesh)
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  start, state = checkpoints.restore_newest(trainer.abstract_state(), batches,
                                           config.checkpoint.fallback)
  if state is None:
    state = trainer.init_state(config.seed)
  writer = MetricWriter(workdir, enabled=is_main)
  to_device = lambda b: sharding.global_batch(b, mesh, config.mesh.rules, config.data.batch_size)
  evaluator = (Evaluator(config, tok, trainer, rows, to_device, config.eval.generative)
               if config.eval.every_steps > 0 else None)
  best = (BestParams(workdir, config.checkpoint.best_metric, config.checkpoint.best_mode)
          if config.checkpoint.best_metric else None)
  moe_layers = [i for i in range(config.model.num_layers) if is_moe_layer(config.model, i)]
  routing = (RoutingLog(workdir, moe_layers, config.analysis.expert_threshold)
             if moe_layers and is_main else None)

  # Counters summed over the whole global batch on device; read only when logging.
  history, evaluations = [], []
  throughput = Throughput(config, jax.devices(), start)
  profile = ProfileWindow(workdir, config.train.profile_start, config.train.profile_steps)
  counted = dict.fromkeys(("tokens", "nonfinite", *SKIP_FIELDS), 0)
  num_steps, log_every = config.train.num_steps, config.train.log_every
  bar = tqdm(range(start, num_steps), desc="train", disable=not is_main, dynamic_ncols=True,
             initial=start, total=num_steps)
  try:
    with distributed.Preemption() as preemption:
      for step in bar:
        profile.before(step)
        state, metrics = trainer.step(state, to_device(next(batches)))
        profile.after(step, state)
        step_routing = metrics.pop("moe_routing", None)   # [MoE layers, token kinds, experts]
        if routing is not None:
          routing.add(step_routing)
        for name in counted:
          counted[name] = counted[name] + metrics.pop(name)
        save = preemption.reached(step) or checkpoints.due(step + 1, num_steps)
        if save or step % log_every == 0 or step == num_steps - 1:
          skipped_updates = int(counted["nonfinite"])
          if skipped_updates and config.train.nonfinite == "stop":
            raise NonFiniteLoss(
                f"non-finite loss or gradient by step {step} ({skipped_updates} updates "
                f"skipped); the newest checkpoint in {checkpoints.directory} holds the last "
                "good state. Lower the learning rate or set train.nonfinite='skip'")
        if step % log_every == 0 or step == num_steps - 1:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          metrics.update(throughput.read(step, int(counted.pop("tokens"))))
          metrics.update({f: int(counted.pop(f)) for f in SKIP_FIELDS})
          metrics["nonfinite_updates_skipped"] = skipped_updates
          counted.update(dict.fromkeys(("tokens", *SKIP_FIELDS), 0))
          history.append({"step": step, **metrics})
          writer.scalars(step, tagged(metrics))
          if routing is not None:
            writer.scalars(step, routing.flush(step))
          bar.set_postfix(text=f"{metrics['text_loss']:.3f}", flow=f"{metrics['flow_loss']:.3f}",
                          bpb=f"{metrics['text_bits_per_byte']:.2f}",
                          tok_s=f"{metrics['tokens_per_s']:.0f}")
        if evaluator and ((step + 1) % config.eval.every_steps == 0 or step == num_steps - 1):
          scalars, images = evaluator(state.params)
          evaluation = {"step": step + 1, **scalars}
          evaluations.append(evaluation)
          writer.scalars(step + 1, {f"eval/{k}": v for k, v in scalars.items()})
          for name, image in images.items():
            writer.image(step + 1, f"eval/{name}", image)
          if best is not None:
            best.update(step + 1, evaluation, state.params)
        if save:
          checkpoints.save(step + 1, state, batches, config)
        if preemption.requested:
          break
  finally:             # an error must not cut a background save short
    checkpoints.close()

  summary = {"first": history[0] if history else None, "last": history[-1] if history else None,
             "resumed_from": start, "preempted": preemption.requested, "is_main": is_main,
             "eval": evaluations[-1] if evaluations else None}
  if not preemption.requested:
    samples = write_samples(trainer, state, tok, config, workdir, writer)
    if is_main:
      summary["samples"] = samples
      if history:
        storage.makedirs(storage.join(workdir, "plots"))
        plot_history(history, storage.join(workdir, "plots", "losses.png"))
      storage.write_json(storage.join(workdir, "summary.json"), summary)
  writer.close()
  return summary
