"""The optimizer loop shared by the representation stages (encoder, RAE decoder, VAE):
AdamW from config.optimizer for config.train.num_steps, metrics averaged between logs like
the main loop's (train/metrics.StepMetrics) to TensorBoard/JSONL.

`loss_fn(model, frozen, batch, rng) -> (loss, metrics)`: the `wrt` parameters of `model`
are trained, `frozen` (an NNX module or None) is only read.
"""
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from mmpretrain import storage
from mmpretrain.train.metrics import MetricWriter, StepMetrics
from mmpretrain.train.optimizer import decay_mask, make_optimizer

REPRESENTATION_DIR = "representation"    # what train-rae / train-vae write in their workdir


def write_summary(workdir: str, summary: dict) -> dict:
  storage.write_json(storage.join(workdir, "summary.json"), summary)
  return summary


def train_model(config, workdir: str, model: nnx.Module, loss_fn, batches, frozen=None,
                name: str = "stage", wrt=nnx.Param) -> list[dict]:
  """Trains the `wrt` parameters of `model` in place (gradients of the others are never
  computed); returns the logged metrics (one dict per log step)."""
  num_steps, log_every = config.train.num_steps, config.train.log_every
  tx = make_optimizer(config.optimizer, num_steps, mask=decay_mask(nnx.state(model, wrt)))
  optimizer = nnx.Optimizer(model, tx, wrt=wrt)

  @nnx.jit
  def step(model, optimizer, frozen, batch, rng):
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
    (loss, metrics), grads = grad_fn(model, frozen, batch, rng)
    optimizer.update(model, grads)
    return dict(metrics, loss=loss)

  writer, window = MetricWriter(workdir), StepMetrics()
  history, key, last = [], jax.random.key(config.seed), time.time()
  bar = tqdm(range(num_steps), desc=name, dynamic_ncols=True)
  for i in bar:
    batch = next(batches)
    window.add(step(model, optimizer, frozen, batch, jax.random.fold_in(key, i)))
    if i % log_every == 0 or i == num_steps - 1:
      metrics = window.read()
      del metrics["nonfinite_updates_skipped"]      # the stages keep every update
      now = time.time()
      metrics["steps_per_s"] = (log_every if i else 1) / max(now - last, 1e-9)
      last = now
      history.append({"step": i, **metrics})
      writer.scalars(i, {f"{name}/{k}": v for k, v in metrics.items()})
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
  writer.close()
  if not np.isfinite(history[-1]["loss"]):
    raise FloatingPointError(f"{name}: the loss is {history[-1]['loss']} after {num_steps} "
                             "steps: lower config.optimizer.learning_rate")
  return history
