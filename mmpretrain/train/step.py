"""The loss of a run, its train state and the jitted train step (gradient accumulation
inside the step)."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmpretrain import sharding
from mmpretrain.batch import DEVICE_FIELDS, SKIP_FIELDS, STREAM_TOKEN_FIELDS
from mmpretrain.config import train_steps
from mmpretrain.run import Run, abstract_arrays
from mmpretrain.tokenizers.visual import frame_latent_tokens
from mmpretrain.train import objective
from mmpretrain.train.optimizer import learning_rate_schedule, make_optimizer


EVAL_NOISE_SEED = 0


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray


class RunLoss:
  """A run's loss (no optimizer): the held-out loss sums an evaluation adds up, and the
  loss `Trainer` differentiates."""

  def __init__(self, run: Run, byte_lengths):
    self.run, self.config = run, run.config
    self.byte_lengths = jnp.asarray(byte_lengths, jnp.float32)
    if run.mesh is None:
      self._eval = jax.jit(self._eval_sums)
    else:
      self._eval = self._on_mesh(self._eval_sums, run.param_sharding, sharding.replicated(run.mesh))

  def _on_mesh(self, fn, first_sharding, out_shardings, **kwargs):
    """fn(first, batch, frozen) jitted over the run's mesh, traced under its activation
    rules."""
    mesh, rules = self.run.mesh, self.config.mesh.rules
    def traced(*args):
      with sharding.activation_rules(mesh, rules):
        return fn(*args)
    return jax.jit(traced, in_shardings=(first_sharding, sharding.batch_sharding(mesh, rules),
                                         sharding.replicated(mesh)),
                   out_shardings=out_shardings, **kwargs)

  def eval_sums(self, params, batch) -> dict:
    """Loss sums of `batch` (no update; jitted): text CE, flow MSE, token and byte counts,
    which add up over batches (objective.summarize turns them into means)."""
    return self._eval(params, batch, self.run.frozen)

  def lower_eval_sums(self, params, batch, frozen=None):
    """eval_sums lowered for these arguments (for inspecting the compiled program)."""
    return self._eval.lower(params, batch, self.run.frozen if frozen is None else frozen)

  def loss(self, params, batch, row_rngs, normalizers, frozen):
    """Loss and metric sums of one (micro)batch; row_rngs holds one key per row, `frozen`
    the representation's weights."""
    cfg, run = self.config, self.run
    if not batch["frames"].shape[1]:          # rows of text alone (data.max_frames=0)
      logits, _, moe_stats = run.model(params)(objective.text_inputs(batch))
      loss, sums = objective.transfusion_loss(logits, None, None, batch, normalizers,
                                              self.byte_lengths, cfg.loss)
      return self._with_moe_terms(loss, sums, moe_stats)
    latents = frame_latent_tokens(run.representation, frozen, batch["frames"],
                                  cfg.visual.patch_size)
    inputs, target = objective.noised_inputs(batch, latents, row_rngs, cfg.diffusion,
                                             run.time_shift, objective.flow_space(cfg))
    logits, pred, moe_stats = run.model(params)(inputs)
    pred = objective.flow_loss_inputs(pred, inputs, cfg)
    weights = (objective.frame_change_weights(batch, latents, cfg.loss)
               if cfg.loss.frame_change_weight != 1.0 else None)
    loss, sums = objective.transfusion_loss(logits, pred, target, batch, normalizers,
                                            self.byte_lengths, cfg.loss, weights)
    return self._with_moe_terms(loss, sums, moe_stats)

  def _with_moe_terms(self, loss, sums, moe_stats):
    if not moe_stats:
      return loss, sums
    cfg = self.config
    return objective.add_moe_terms(loss, sums, moe_stats, cfg.loss,
                                   cfg.optimizer.grad_accum_steps)

  def _eval_sums(self, params, batch, frozen):
    batch = {k: batch[k] for k in DEVICE_FIELDS}
    # The same noise for every evaluation, so successive evaluations are comparable.
    row_rngs = jax.random.split(jax.random.key(EVAL_NOISE_SEED), batch["tokens"].shape[0])
    _, sums = self.loss(params, batch, row_rngs, objective.loss_normalizers(batch), frozen)
    return {k: sums[k] for k in objective.ADDITIVE_SUMS}


class Trainer(RunLoss):
  """The run's loss with its optimizer: the train state and the jitted train step."""

  def __init__(self, run: Run, byte_lengths):
    super().__init__(run, byte_lengths)
    config, mesh = run.config, run.mesh
    self.tx = make_optimizer(config.optimizer, train_steps(config))
    self.schedule = learning_rate_schedule(config.optimizer, train_steps(config))
    self.state_sharding = None
    if mesh is None:
      self._step = jax.jit(self._train_step, donate_argnums=0)
      return
    sharding.check_batch_splits(config.data.batch_size, mesh, config.mesh.rules)
    self.state_sharding = sharding.state_shardings(
        jax.eval_shape(lambda: self._initial_state(0)), mesh, config.mesh.rules)
    self._step = self._on_mesh(self._train_step, self.state_sharding,
                               (self.state_sharding, sharding.replicated(mesh)),
                               donate_argnums=0)

  def _initial_state(self, seed: int) -> TrainState:
    _, params = nnx.split(self.run.new_model(seed))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=jax.random.key(seed + 1))

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, no arrays: the target of a restore."""
    return abstract_arrays(jax.eval_shape(lambda: self._initial_state(0)), self.state_sharding)

  def init_state(self, seed: int) -> TrainState:
    """The initial state, created directly in its shards (no host-side full copy)."""
    return jax.jit(self._initial_state, static_argnums=0,
                   out_shardings=self.state_sharding)(seed)

  def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer step (jitted; `state` is donated)."""
    return self._step(state, batch, self.run.frozen)

  def lower_step(self, state: TrainState, batch, frozen=None):
    """The step lowered for these arguments (for inspecting the compiled program)."""
    return self._step.lower(state, batch, self.run.frozen if frozen is None else frozen)

  def gradients(self, params, batch, rng, frozen):
    """Gradient of the full-batch loss, summed over `grad_accum_steps` microbatches.

    Normalizers are batch-wide and noise keys are per row, so any number of microbatches
    gives the same gradient as one.
    """
    accum = self.config.optimizer.grad_accum_steps
    normalizers = objective.loss_normalizers(batch)
    batch = dict(batch, row_rngs=jax.random.split(rng, batch["tokens"].shape[0]))
    micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)
    grad_fn = jax.grad(self.loss, has_aux=True)

    def body(carry, mb):
      grads, sums = carry
      row_rngs = mb.pop("row_rngs")
      g, m = grad_fn(params, mb, row_rngs, normalizers, frozen)
      return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, m)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], micro)
    _, sums_shape = jax.eval_shape(self.loss, params, first, first.pop("row_rngs"), normalizers,
                                   frozen)
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
    (grads, sums), _ = jax.lax.scan(body, (zeros, sums0), micro)
    return grads, sums

  def _train_step(self, state: TrainState, batch, frozen):
    rng, step_rng = jax.random.split(state.rng)
    # Documents dropped, and the tokens each stream packed.
    counts = {f: jnp.sum(batch[f]) for f in (*SKIP_FIELDS, *STREAM_TOKEN_FIELDS) if f in batch}
    batch = {k: batch[k] for k in DEVICE_FIELDS}
    grads, sums = self.gradients(state.params, batch, step_rng, frozen)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    expert_load = sums.pop("expert_load", None)       # [MoE layers, experts]
    kind_load = sums.pop("kind_load", None)           # [MoE layers, token kinds, experts]
    if expert_load is not None:        # sigmoid routers: balance by bias, not by gradient
      model = self.run.model(params)
      model.decoder.update_router_bias(expert_load, self.config.model.moe.bias_update_rate)
      params = nnx.split(model)[1]
    metrics = objective.summarize(sums, self.config.loss)
    if expert_load is not None:
      busiest = jnp.max(expert_load, -1) / jnp.maximum(jnp.mean(expert_load, -1), 1.0)
      metrics["moe_max_load_over_mean"] = jnp.max(busiest)
      metrics["moe_routing"] = kind_load     # not a scalar: the loop accumulates it
    metrics.update(counts, tokens=jnp.sum(batch["segment_ids"] > 0))
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = self.schedule(state.step)
    # A non-finite loss or gradient leaves parameters and optimizer state as they were; the
    # batch still counts as consumed (the loop decides whether to go on: train.nonfinite).
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    metrics["nonfinite"] = (~finite).astype(jnp.int32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics
