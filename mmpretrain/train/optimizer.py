"""optax learning-rate schedules and the AdamW transform, from config.optimizer."""
import jax
import optax
from flax import nnx

from mmpretrain.model import layers


def learning_rate_schedule(ocfg, num_steps: int) -> optax.Schedule:
  peak, warmup = ocfg.learning_rate, ocfg.warmup_steps
  floor = peak * ocfg.min_lr_ratio
  if ocfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(num_steps, warmup + 1), floor)
  warmup_fn = optax.linear_schedule(0.0, peak, warmup)
  if ocfg.schedule == "constant":
    return optax.join_schedules([warmup_fn, optax.constant_schedule(peak)], [warmup])
  if ocfg.schedule == "wsd":   # warmup-stable-decay: hold the peak, decay linearly at the end
    decay_steps = max(int(num_steps * ocfg.decay_fraction), 1)
    stable_end = max(num_steps - decay_steps, warmup)
    return optax.join_schedules(
        [warmup_fn, optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay_steps)],
        [warmup, stable_end])
  raise ValueError(f"unknown optimizer.schedule {ocfg.schedule!r}")


def is_decayed(variable) -> bool:
  """Weight decay applies to trained matrices (and stacks of them: experts, convolutions)
  and embeddings, never to vectors: norm scales, biases, the sigmoid router's bias.

  The rank is read from the parameter itself, less the stacking axis of scanned layers
  (named by its logical-axis annotation), so no list of attribute names has to be kept.
  """
  return isinstance(variable, nnx.Param) and layers.unstacked_ndim(variable) >= 2


def decay_mask(params):
  """A prefix tree of `params` (an NNX state of Variables): True where weight decay applies."""
  return jax.tree.map(is_decayed, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(ocfg, num_steps: int, mask=decay_mask) -> optax.GradientTransformation:
  """Global-norm clipping (grad_clip_norm = 0 turns it off), then AdamW with decoupled
  weight decay where `mask` says: `decay_mask` itself when the optimizer is handed NNX
  Variables (the train state), or `decay_mask(state)` computed once from them when it is
  handed bare arrays (nnx.Optimizer's update does that)."""
  schedule = learning_rate_schedule(ocfg, num_steps)
  # identity() keeps the optimizer state's structure the same with and without clipping.
  clip = (optax.clip_by_global_norm(ocfg.grad_clip_norm) if ocfg.grad_clip_norm
          else optax.identity())
  return optax.chain(clip, optax.adamw(schedule, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps,
                                       weight_decay=ocfg.weight_decay, mask=mask))
