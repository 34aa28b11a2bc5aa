"""How good a visual representation is, independent of the unified model: reconstruction
PSNR on held-out images, and a linear probe of its latents on image classes (the
understanding proxy). `mmpretrain eval-representation` writes both as a JSON table."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmpretrain import storage
from mmpretrain.data import pipeline
from mmpretrain.data.images import NO_LABEL, image_batches
from mmpretrain.pixels import signed_psnr, to_signed
from mmpretrain.tokenizers.visual import make_representation


def linear_probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, steps: int,
                          learning_rate: float, weight_decay: float) -> float:
  """Multinomial logistic regression (full-batch AdamW on standardized features); the
  held-out accuracy."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  params = {"w": jnp.zeros((train_x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def loss(p):
    logits = train_x @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, train_y).mean()

  @jax.jit
  def fit(params):
    def step(carry, _):
      p, state = carry
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      return (optax.apply_updates(p, updates), state), None
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params

  params = fit(params)
  predictions = jnp.argmax(test_x @ params["w"] + params["b"], axis=-1)
  return float(jnp.mean(predictions == test_y))


def _labelled(config, tok, dataset: str, split: str, count: int) -> dict:
  batch = next(image_batches(config, tok, {dataset: 1.0}, split=split, batch_size=count,
                             caption_len=1, seed=0, repeat=split == "train"))
  if (batch["label"] == NO_LABEL).any():
    raise ValueError(f"eval_representation.probe_datasets: {dataset!r} has no class labels "
                     f"(map a `label` field in config.data.datasets.{dataset}.fields)")
  return batch


def evaluate_representation(config, out_path: str | None = None) -> dict:
  """PSNR of encode→decode on held-out images and, per probe dataset, a linear probe of
  the (flattened) latents on its classes."""
  e = config.eval_representation
  tok = pipeline.load_tokenizer(config)
  representation = make_representation(config)
  params = representation.load_params()
  encode = jax.jit(representation.encode)
  reconstruct = jax.jit(lambda p, f: representation.decode(p, representation.encode(p, f)))
  features = lambda frames: np.asarray(encode(params, frames), np.float32).reshape(
      len(frames), -1)

  result = {"representation": config.visual.representation,
            "checkpoint": config.visual.checkpoint or None,
            "latent_grid": list(representation.latent_grid), "psnr_db": {},
            "linear_probe_accuracy": {}, "held_out_images": {}}
  for dataset in e.probe_datasets:
    held_out = _labelled(config, tok, dataset, "validation", e.held_out_images)
    train = _labelled(config, tok, dataset, "train", e.probe_train_images)
    num_classes = int(max(train["label"].max(), held_out["label"].max())) + 1
    result["held_out_images"][dataset] = int(len(held_out["label"]))
    reconstruction = reconstruct(params, held_out["images"])
    result["psnr_db"][dataset] = float(signed_psnr(to_signed(reconstruction),
                                                   to_signed(held_out["images"])).mean())
    result["linear_probe_accuracy"][dataset] = linear_probe_accuracy(
        features(train["images"]), train["label"], features(held_out["images"]),
        held_out["label"], num_classes, steps=e.probe_steps,
        learning_rate=e.probe_learning_rate, weight_decay=e.probe_weight_decay)
  if out_path:
    storage.makedirs(storage.parent(storage.absolute(out_path)))
    storage.write_json(out_path, result)
  return result
