"""optax learning-rate schedules and the AdamW transform, from config.optimizer."""
import jax
import optax


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


DECAYED = ("kernel", "embedding", "gate", "up", "down")   # the last three: stacked experts


def decay_mask(params):
  """Weight decay on matmul weights and embeddings only, not on norms or biases."""
  def is_decayed(path, _):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return names[-1] in DECAYED
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(ocfg, num_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(ocfg, num_steps)
  return optax.chain(
      optax.clip_by_global_norm(ocfg.grad_clip_norm),
      optax.adamw(schedule, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps,
                  weight_decay=ocfg.weight_decay, mask=decay_mask))
