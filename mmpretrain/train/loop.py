"""The training loop: data -> jitted step -> metrics, evaluations, checkpoints; samples and
plots at the end.

`train()` is the loop itself: every step runs `TrainLoop.step`, then whichever of `log`,
`evaluate` and `save` are due; `finish` writes the run's end-of-run outputs.
"""
import jax
import matplotlib
import numpy as np
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from mmpretrain import config as config_lib
from mmpretrain import distributed, sharding, storage
from mmpretrain.data import pipeline
from mmpretrain.generate import sample as sample_lib
from mmpretrain.model.transformer import is_moe_layer
from mmpretrain.run import Run
from mmpretrain.train.checkpoint import BestParams, RunCheckpoints, pretrained_state
from mmpretrain.train.evaluate import Evaluator
from mmpretrain.train.metrics import MetricWriter, StepMetrics, tagged
from mmpretrain.train.routing import RoutingLog
from mmpretrain.train.step import Trainer
from mmpretrain.train.stream_shares import StreamShares
from mmpretrain.train.throughput import ProfileWindow, Throughput
# pylint: enable=wrong-import-position

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


def write_samples(run, params, step: int, tok, workdir: str,
                  writer: MetricWriter) -> str | None:
  """Generates images for config.sample.captions (none: nothing) and writes a PNG grid
  (one row per caption).

  Every process runs the sampler (its params are sharded over all of them); process 0
  writes the grid and returns its path."""
  config = run.config
  if not config.sample.captions:
    return None
  captions = [c for c in config.sample.captions for _ in range(config.sample.images_per_caption)]
  images = np.asarray(sample_lib.make_image_sampler(run, tok)(params, captions,
                                                              jax.random.key(config.seed)))
  if jax.process_index() != 0:
    return None
  grid = sample_lib.image_grid(images, columns=config.sample.images_per_caption)
  storage.makedirs(storage.join(workdir, "samples"))
  path = storage.join(workdir, "samples", f"images_step{step}.png")
  storage.save_image(path, grid)
  writer.image(step, "samples/caption_to_image", np.asarray(grid))
  return path


def run_length(config) -> dict:
  """How long the run is, and which key said so (train.tokens or train.num_steps)."""
  steps, per_step = config_lib.train_steps(config), config_lib.tokens_per_step(config)
  return {"num_steps": steps, "tokens_per_step": per_step, "tokens": steps * per_step,
          "set_by": "train.tokens" if config.train.get("tokens", 0) > 0 else "train.num_steps"}


class NonFiniteLoss(FloatingPointError):
  """The loss or gradient went non-finite under train.nonfinite='stop'."""


class TrainLoop:
  """One invocation of `train`: the run, its data, its state (resumed from the newest
  complete checkpoint, else fresh) and where its figures go."""

  def __init__(self, config, workdir: str):
    config_lib.validate(config)
    self.config, self.workdir = config, workdir
    self.is_main = jax.process_index() == 0
    storage.makedirs(workdir)
    if self.is_main:
      storage.write_text(storage.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2))
    self.tok = pipeline.load_tokenizer(config)
    mesh = sharding.make_mesh(config.mesh)
    rows = sharding.process_rows(config.data.batch_size, mesh, config.mesh.rules)
    self.run = Run(config, mesh)
    self.batches = pipeline.make_batches(config, self.tok, self.run.data_spec, rows=rows)
    self.trainer = Trainer(self.run, self.tok.byte_lengths())
    self.to_device = lambda b: sharding.global_batch(b, mesh, config.mesh.rules,
                                                     config.data.batch_size)
    self.checkpoints = RunCheckpoints(workdir, config.checkpoint)
    self.start, self.state = self.checkpoints.restore_newest(
        self.trainer.abstract_state(), self.batches, config.checkpoint.fallback)
    if self.state is None:
      self.state = (pretrained_state(self.trainer, config) if config.train.get("init_from")
                    else self.trainer.init_state(config.seed))
    self.writer = MetricWriter(workdir, enabled=self.is_main)
    self.evaluator = (Evaluator(self.trainer, self.tok)
                      if config.eval.every_steps > 0 else None)
    self.best = (BestParams(workdir, config.checkpoint.best_metric, config.checkpoint.best_mode)
                 if config.checkpoint.best_metric else None)
    moe_layers = [i for i in range(config.model.num_layers) if is_moe_layer(config.model, i)]
    self.routing = (RoutingLog(workdir, moe_layers, config.analysis.expert_threshold)
                    if moe_layers and self.is_main else None)
    self.metrics = StepMetrics()
    self.shares = StreamShares(config)
    self.throughput = Throughput(config, jax.devices(), self.start)
    self.profile = ProfileWindow(workdir, config.train.profile_start, config.train.profile_steps)
    self.history, self.evaluations = [], []
    self.length = run_length(config)
    self.num_steps = self.length["num_steps"]
    if self.is_main:
      print(f"train: {self.length['num_steps']:,} steps of {self.length['tokens_per_step']:,} "
            f"tokens = {self.length['tokens']:,} tokens (set by {self.length['set_by']}), from "
            f"step {self.start}", flush=True)

  def steps(self):
    return tqdm(range(self.start, self.num_steps), desc="train", disable=not self.is_main,
                dynamic_ncols=True, initial=self.start, total=self.num_steps)

  def is_last(self, step: int) -> bool:
    return step == self.num_steps - 1

  def log_due(self, step: int) -> bool:
    return step % self.config.train.log_every == 0 or self.is_last(step)

  def eval_due(self, step: int) -> bool:
    every = self.config.eval.every_steps
    return self.evaluator is not None and ((step + 1) % every == 0 or self.is_last(step))

  def step(self, step: int) -> None:
    """One train step; its metrics stay on device until a log reads them."""
    self.profile.before(step)
    self.state, metrics = self.trainer.step(self.state, self.to_device(next(self.batches)))
    self.profile.after(step, self.state)
    step_routing = metrics.pop("moe_routing", None)   # [MoE layers, token kinds, experts]
    if self.routing is not None:
      self.routing.add(step_routing)
    self.metrics.add(metrics)

  def check_finite(self, step: int) -> None:
    """Under train.nonfinite='stop', refuses to go on (or to save) past a skipped update."""
    skipped = self.metrics.nonfinite_updates()
    if skipped and self.config.train.nonfinite == "stop":
      raise NonFiniteLoss(
          f"non-finite loss or gradient by step {step} ({skipped} updates skipped); the "
          f"newest checkpoint in {self.checkpoints.directory} holds the last good state. "
          "Lower the learning rate or set train.nonfinite='skip'")

  def log(self, step: int, bar) -> None:
    """Means and counts since the previous log, throughput, to TensorBoard and the bar."""
    metrics = self.metrics.read()
    metrics.update(self.throughput.read(step, int(metrics.pop("tokens"))))
    metrics.update(self.shares.read(metrics))
    self.history.append({"step": step, **metrics})
    self.writer.scalars(step, tagged(metrics))
    if self.routing is not None:
      self.writer.scalars(step, self.routing.flush(step))
    bar.set_postfix(text=f"{metrics['text_loss']:.3f}", flow=f"{metrics['flow_loss']:.3f}",
                    bpb=f"{metrics['text_bits_per_byte']:.2f}",
                    tok_s=f"{metrics['tokens_per_s']:.0f}")

  def evaluate(self, step: int) -> None:
    """Every evaluation of the parameters after `step + 1` steps; keeps the best."""
    scalars, images = self.evaluator(self.state.params)
    evaluation = {"step": step + 1, **scalars}
    self.evaluations.append(evaluation)
    self.writer.scalars(step + 1, {f"eval/{k}": v for k, v in scalars.items()})
    for name, image in images.items():
      self.writer.image(step + 1, f"eval/{name}", image)
    if self.best is not None:
      self.best.update(step + 1, evaluation, self.state.params)

  def save(self, step: int) -> None:
    self.checkpoints.save(step + 1, self.state, self.batches, self.config)

  def finish(self, preempted: bool) -> dict:
    """The first and last logged metrics, the last evaluation; unless preempted (or the
    run was finished before this invocation, whose outputs stay), the sample grid, the
    loss plot and summary.json."""
    history = self.history
    summary = {"first": history[0] if history else None,
               "last": history[-1] if history else None, "resumed_from": self.start,
               "preempted": preempted, "is_main": self.is_main, "length": self.length,
               "stream_tokens": self.shares.summary(),
               "eval": self.evaluations[-1] if self.evaluations else None}
    if not preempted and self.start < self.num_steps:   # a finished run keeps its outputs
      samples = write_samples(self.run, self.state.params, int(self.state.step), self.tok,
                              self.workdir, self.writer)
      if self.is_main:
        summary["samples"] = samples
        if history:
          storage.makedirs(storage.join(self.workdir, "plots"))
          plot_history(history, storage.join(self.workdir, "plots", "losses.png"))
        storage.write_json(storage.join(self.workdir, "summary.json"), summary)
    self.writer.close()
    return summary


def train(config, workdir: str) -> dict:
  """Trains for the run's length (train.num_steps, or train.tokens) in `workdir`, resuming
  from its newest complete checkpoint; returns the first and last metrics of this
  invocation (and the sample path).

  SIGTERM saves a checkpoint after the current step and returns early.
  """
  loop = TrainLoop(config, workdir)
  try:
    with distributed.Preemption() as preemption:
      bar = loop.steps()
      for step in bar:
        loop.step(step)
        save = preemption.reached(step) or loop.checkpoints.due(step + 1, loop.num_steps)
        if save or loop.log_due(step):
          loop.check_finite(step)
        if loop.log_due(step):
          loop.log(step, bar)
        if loop.eval_due(step):
          loop.evaluate(step)
        if save:
          loop.save(step)
        if preemption.requested:
          break
  finally:             # an error must not cut a background save short
    loop.checkpoints.close()
  return loop.finish(preemption.requested)
