"""A SigLIP-style image–text dual encoder trained in-project: the stand-in for a pretrained
semantic encoder (no weights can be fetched here), frozen afterwards as the RAE's encoder.

Image tower: `VisionTransformer` with the attention-pooling head. Text tower: a
bidirectional transformer over the caption, pooled at its last real token. Loss: the
pairwise sigmoid loss of SigLIP (Zhai et al., 2023) with a learned temperature and bias.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmpretrain.encoders.vit import Block, ViTConfig, VisionTransformer


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


class TextTower(nnx.Module):
  """Caption ids [B, L] (0 = padding) -> one embedding [B, out_dim]."""

  def __init__(self, cfg: TextConfig, out_dim: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(cfg.vocab_size, cfg.width, rngs=rngs,
                           embedding_init=nnx.initializers.normal(0.02))
    self.pos_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.max_len, cfg.width)) * 0.02)
    block_cfg = ViTConfig(image_size=1, patch_size=1, width=cfg.width, depth=cfg.depth,
                          num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    self.blocks = nnx.List([Block(block_cfg, dtype=jnp.float32, rngs=rngs)
                            for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(cfg.width, epsilon=block_cfg.layer_norm_eps, rngs=rngs)
    self.head = nnx.Linear(cfg.width, out_dim, rngs=rngs)

  def __call__(self, ids):
    real = ids > 0
    x = self.embed(ids) + self.pos_embed[...][:ids.shape[1]]
    mask = (real[:, None, None, :])                  # [B, 1 (heads), 1 (queries), keys]
    for block in self.blocks:
      x = block(x, mask)
    last = jnp.maximum(real.sum(axis=1) - 1, 0)
    pooled = jnp.take_along_axis(self.norm(x), last[:, None, None], axis=1)[:, 0]
    return self.head(pooled)


class DualEncoder(nnx.Module):
  """Image tower, text tower, and the sigmoid loss's temperature t and bias b."""

  def __init__(self, image_cfg: ViTConfig, text_cfg: TextConfig, *, temperature_init: float = 10.0,
               bias_init: float = -10.0, rngs: nnx.Rngs):
    if not image_cfg.pool_head:
      raise ValueError("the contrastive image tower needs pool_head=True (its embedding)")
    self.image = VisionTransformer(image_cfg, rngs=rngs)
    self.text = TextTower(text_cfg, image_cfg.width, rngs=rngs)
    self.log_temperature = nnx.Param(jnp.log(jnp.asarray(temperature_init)))
    self.bias = nnx.Param(jnp.asarray(bias_init, jnp.float32))

  def embed(self, images, captions):
    unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    return unit(self.image(images)["pooled"]), unit(self.text(captions))

  def logits(self, images, captions):
    """[B images, B captions] pair logits t·<x_i, y_j> + b."""
    x, y = self.embed(images, captions)
    return jnp.exp(self.log_temperature[...]) * x @ y.T + self.bias[...]


def sigmoid_loss(logits, captions) -> jnp.ndarray:
  """-1/B Σ_i Σ_j log σ(z_ij · logit_ij): z = +1 for matching pairs, else -1.

  Pairs whose captions are identical match too: with class-like captions ("a handwritten
  digit three") a batch holds many, and calling them negatives would fight the labels.
  """
  same = jnp.all(captions[:, None, :] == captions[None, :, :], axis=-1)
  z = jnp.where(same, 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / logits.shape[0]


def zero_shot_accuracy(model: DualEncoder, images, labels, class_captions) -> float:
  """Share of images whose best-matching caption among `class_captions` [K, L] is their
  label's (the encoder's semantic sanity check; labels index class_captions)."""
  x, y = model.embed(images, class_captions)
  return float(np.mean(np.asarray(jnp.argmax(x @ y.T, axis=-1)) == np.asarray(labels)))
