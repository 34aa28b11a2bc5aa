"""The optimizer loop of the representation stages (encoder, RAE decoder, VAE, classifier):
AdamW from config.optimizer for config.train.num_steps on the config's mesh, checkpointed
and resumable like `mmpretrain train`.

Shared with the main loop (train/loop.py), not written twice: the mesh and the batches'
placement (a process loads the rows its devices hold, `sharding.global_batch` joins them),
joining a multi-host job (cli.py calls `distributed.initialize` for the stage verbs too),
the checkpoints (train/checkpoint.RunCheckpoints: Orbax every checkpoint.every_steps and
after the last step, the data iterators' positions per shard, resume from the newest
complete one, checkpoint.fallback), preemption (`distributed.Preemption`: SIGTERM saves
after the current step and stops every process at the same step) and the metrics
(StepMetrics, MetricWriter). The loop itself is its own: the main loop's TrainLoop is built
around a Run (the unified model, its representation, packed rows, evaluations, samples),
none of which a stage has, while a stage trains part of an NNX module whose parameters
name no logical axes and has work before its first step (the RAE's latent statistics) and
after its last (a held-out score, the saved module). A short loop over the shared parts
reads better than one loop with hooks for both.

The state (`StageState`) holds the trained parameters and their AdamW state, split ZeRO-3
style over the `embed` rule's mesh axes (fsdp) along each array's largest dimension they
divide; the module's other variables (the RAE's latent statistics), replicated; the step;
and the rng key (step i draws with fold_in(key, i)). Frozen parameters (the RAE's encoder)
are not part of it: they come from their source at every start and enter the step
replicated, as an argument. Batches are split over the `batch` rule's mesh axes.

`loss_fn(model, batch, rng) -> (loss, metrics)`; gradients reach only the `wrt`
parameters of `model`.
"""
import dataclasses
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from mmpretrain import distributed, sharding, storage
from mmpretrain.run import abstract_arrays
from mmpretrain.train.checkpoint import RunCheckpoints
from mmpretrain.train.metrics import MetricWriter, StepMetrics
from mmpretrain.train.optimizer import make_optimizer

REPRESENTATION_DIR = "representation"    # what train-rae / train-vae write in their workdir


def write_summary(workdir: str, summary: dict) -> dict:
  """summary.json in `workdir`, written by process 0."""
  if jax.process_index() == 0:
    storage.write_json(storage.join(workdir, "summary.json"), summary)
  return summary


def data_rows(config) -> range:
  """The rows of each global batch this process loads: all of them in a one-process run."""
  mesh = sharding.make_mesh(config.mesh)
  return sharding.process_rows(config.data.batch_size, mesh, config.mesh.rules)


@flax.struct.dataclass
class StageState:
  step: jnp.ndarray
  params: Any          # the trained parameters (an nnx.State)
  buffers: Any         # the module's other non-parameter variables
  opt_state: Any
  rng: jnp.ndarray     # step i draws with fold_in(rng, i)


class StageTrainer:
  """The part of `module` a stage trains, its optimizer and the jitted step on `mesh`. The
  module may be abstract (nnx.eval_shape), to compile the step for a TPU slice
  (train/aot.py)."""

  def __init__(self, config, mesh, module: nnx.Module, loss_fn, wrt=nnx.Param):
    if mesh.shape["tensor"] > 1:
      raise sharding.ShardingError(
          f"config.mesh.tensor={mesh.shape['tensor']}: the representation stages split "
          "batches and weights, not heads; set --config.mesh.tensor=1")
    sharding.check_batch_splits(config.data.batch_size, mesh, config.mesh.rules)
    self.config, self.loss_fn, self.wrt = config, loss_fn, wrt
    self.graphdef, params, self._frozen, buffers = self._split(module)
    self.tx = make_optimizer(config.optimizer, config.train.num_steps)
    self._abstract = jax.eval_shape(self._initial_state, params, buffers)
    replicated = sharding.replicated(mesh)
    split = lambda tree: sharding.largest_dim_shardings(
        tree, mesh, sharding.mesh_axes(config.mesh.rules, "embed"))
    everywhere = lambda tree: jax.tree.map(lambda _: replicated, tree)
    self.state_sharding = StageState(
        step=replicated, params=split(self._abstract.params),
        buffers=everywhere(self._abstract.buffers), opt_state=split(self._abstract.opt_state),
        rng=replicated)
    self.frozen_sharding = everywhere(self._frozen)
    self.batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
    self._step = jax.jit(self._train_step,
                         in_shardings=(self.state_sharding, self.batch_sharding,
                                       self.frozen_sharding),
                         out_shardings=(self.state_sharding, replicated), donate_argnums=0)

  def _split(self, module):
    """(graphdef, trained parameters, frozen parameters, other variables)."""
    return nnx.split(module, self.wrt, nnx.Param, ...)

  def _initial_state(self, params, buffers) -> StageState:
    return StageState(step=jnp.zeros((), jnp.int32), params=params, buffers=buffers,
                      opt_state=self.tx.init(params), rng=jax.random.key(self.config.seed))

  def abstract_state(self) -> StageState:
    """Shapes, dtypes and shardings of the state: the target of a restore."""
    return abstract_arrays(self._abstract, self.state_sharding)

  def abstract_frozen(self):
    return abstract_arrays(self._frozen, self.frozen_sharding)

  def init_state(self, module: nnx.Module) -> StageState:
    """The state of `module`'s current values (the same on every process), in its shards."""
    _, params, _, buffers = self._split(module)
    where = self.state_sharding
    return jax.jit(self._initial_state, out_shardings=where, donate_argnums=(0, 1))(
        sharding.host_to_global(params, where.params),
        sharding.host_to_global(buffers, where.buffers))

  def frozen(self, module: nnx.Module):
    """`module`'s frozen parameters, replicated: the step's last argument."""
    return sharding.host_to_global(self._split(module)[2], self.frozen_sharding)

  def step(self, state: StageState, batch: dict, frozen) -> tuple[StageState, dict]:
    """One optimizer step (jitted; `state` is donated)."""
    return self._step(state, batch, frozen)

  def lower_step(self, batch):
    """The step lowered for the abstract state and `batch` (ShapeDtypeStructs)."""
    return self._step.lower(self.abstract_state(), batch, self.abstract_frozen())

  def _train_step(self, state: StageState, batch, frozen):
    rng = jax.random.fold_in(state.rng, state.step)
    def loss(params):
      return self.loss_fn(nnx.merge(self.graphdef, params, frozen, state.buffers), batch, rng)
    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
            dict(metrics, loss=value))

  def update_module(self, module: nnx.Module, state: StageState) -> None:
    """Writes the state's parameters and variables into `module`, whole on this process's
    first device (what a stage evaluates and saves)."""
    gathered = multihost_utils.process_allgather((state.params, state.buffers), tiled=True)
    nnx.update(module, *jax.tree.map(jnp.asarray, gathered))


@dataclasses.dataclass
class Trained:
  """What one invocation of `train_model` did."""
  history: list[dict]          # the logged metrics, a dict per log step
  resumed_from: int
  preempted: bool

  def summary(self) -> dict:
    return {"first": self.history[0] if self.history else None,
            "last": self.history[-1] if self.history else None,
            "resumed_from": self.resumed_from, "preempted": self.preempted}


def train_model(config, workdir: str, module: nnx.Module, loss_fn, batches, name: str = "stage",
                wrt=nnx.Param, prepare=None) -> Trained:
  """Trains the `wrt` parameters of `module` to config.train.num_steps, resuming from the
  newest complete checkpoint in <workdir>/checkpoints, and leaves the result in `module`
  (unless preempted: SIGTERM saves after the current step and returns).

  `batches`: this process's rows of each global batch (`data_rows`), checkpointable per
  shard (data/images.stage_batches). `prepare(module)` runs before the first step of a
  run that starts afresh, never on a resume (the checkpoint holds what it set).
  """
  num_steps, log_every = config.train.num_steps, config.train.log_every
  mesh = sharding.make_mesh(config.mesh)
  trainer = StageTrainer(config, mesh, module, loss_fn, wrt)
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  start, state = checkpoints.restore_newest(trainer.abstract_state(), batches,
                                            config.checkpoint.fallback)
  if state is None:
    if prepare is not None:
      prepare(module)
    state = trainer.init_state(module)
  frozen = trainer.frozen(module)
  is_main = jax.process_index() == 0
  writer, window, history = MetricWriter(workdir, enabled=is_main), StepMetrics(), []
  logged, last = start - 1, time.time()
  try:
    with distributed.Preemption() as preemption:
      bar = tqdm(range(start, num_steps), desc=name, disable=not is_main, dynamic_ncols=True,
                 initial=start, total=num_steps)
      for i in bar:
        batch = sharding.global_batch(next(batches), mesh, config.mesh.rules,
                                      config.data.batch_size)
        state, metrics = trainer.step(state, batch, frozen)
        window.add(metrics)
        if i % log_every == 0 or i == num_steps - 1:
          metrics = window.read()
          del metrics["nonfinite_updates_skipped"]      # the stages keep every update
          now = time.time()
          metrics["steps_per_s"] = (i - logged) / max(now - last, 1e-9)
          logged, last = i, now
          history.append({"step": i, **metrics})
          writer.scalars(i, {f"{name}/{k}": v for k, v in metrics.items()})
          bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if preemption.reached(i) or checkpoints.due(i + 1, num_steps):
          checkpoints.save(i + 1, state, batches, config)
        if preemption.requested:
          break
  finally:             # an error must not cut a background save short
    checkpoints.close()
  writer.close()
  if history and not np.isfinite(history[-1]["loss"]):
    raise FloatingPointError(f"{name}: the loss is {history[-1]['loss']} at step "
                             f"{history[-1]['step']}: lower config.optimizer.learning_rate")
  if not preemption.requested:
    trainer.update_module(module, state)
  return Trained(history, start, preemption.requested)
