"""Pre-LayerNorm Vision Transformers: the SigLIP (2) vision tower, DINOv2 with registers, and
the small encoders trained in-project, as one NNX module configured by `ViTConfig`.

The families differ only in switches: DINOv2 has a class token, register tokens, layer
scale, exact GELU (SwiGLU for giant) and bicubic-antialias position resizing; SigLIP has
no extra tokens, tanh-GELU, plain bicubic resizing and a multi-head attention-pooling
(MAP) head. Inputs are normalized images [B, H, W, C]; a patch embedding is a linear map
of the row-major (p, p, C) patch, which is what a stride-p convolution computes.
"""
import dataclasses

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmpretrain.encoders.interpolate import resize_matrix

GELU = {"gelu": False, "gelu_tanh": True}       # activation -> jax.nn.gelu(approximate=...)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int                    # the position-embedding grid is image_size/patch_size
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  channels: int = 3
  activation: str = "gelu_tanh"      # 'gelu_tanh' | 'gelu' (exact)
  swiglu: bool = False               # SwiGLU MLP (DINOv2 giant) instead of fc1-act-fc2
  layer_norm_eps: float = 1e-6
  layer_scale: float | None = None   # DINOv2's per-channel residual scales (init value)
  cls_token: bool = False
  num_registers: int = 0
  pool_head: bool = False            # SigLIP's attention-pooling head
  interpolation: str = "bicubic"     # 'bicubic' (SigLIP) | 'bicubic_antialias' (DINOv2)
  image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_prefix_tokens(self) -> int:
    return int(self.cls_token) + self.num_registers


def _linear(rngs, d_in, d_out, dtype):
  return nnx.Linear(d_in, d_out, dtype=dtype, rngs=rngs,
                    kernel_init=nnx.initializers.truncated_normal(0.02))


class Attention(nnx.Module):
  """Multi-head attention with biased q/k/v/o projections; bidirectional, optionally
  masked (mask broadcastable to [B, heads, queries, keys], True = attend)."""

  def __init__(self, width: int, num_heads: int, *, dtype, rngs):
    self.num_heads = num_heads
    self.q, self.k, self.v, self.o = (_linear(rngs, width, width, dtype) for _ in range(4))

  def __call__(self, x, context=None, mask=None):
    context = x if context is None else context
    split = lambda t: einops.rearrange(t, "b t (n h) -> b t n h", n=self.num_heads)
    out = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(context)),
                                       split(self.v(context)), mask=mask)
    return self.o(einops.rearrange(out, "b t n h -> b t (n h)"))


class Mlp(nnx.Module):

  def __init__(self, cfg: ViTConfig, *, dtype, rngs):
    self.swiglu, self.approximate = cfg.swiglu, GELU[cfg.activation]
    if cfg.swiglu:
      self.gate = _linear(rngs, cfg.width, cfg.mlp_dim, dtype)
    self.fc1 = _linear(rngs, cfg.width, cfg.mlp_dim, dtype)
    self.fc2 = _linear(rngs, cfg.mlp_dim, cfg.width, dtype)

  def __call__(self, x):
    if self.swiglu:
      return self.fc2(jax.nn.silu(self.gate(x)) * self.fc1(x))
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=self.approximate))


class Block(nnx.Module):
  """x + ls1·attn(norm1(x)), then + ls2·mlp(norm2(x))."""

  def __init__(self, cfg: ViTConfig, *, dtype, rngs):
    norm = lambda: nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.norm1, self.norm2 = norm(), norm()
    self.attn = Attention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(cfg, dtype=dtype, rngs=rngs)
    self.layer_scale = cfg.layer_scale is not None
    if self.layer_scale:
      self.ls1 = nnx.Param(jnp.full((cfg.width,), cfg.layer_scale, jnp.float32))
      self.ls2 = nnx.Param(jnp.full((cfg.width,), cfg.layer_scale, jnp.float32))

  def __call__(self, x, mask=None):
    a = self.attn(self.norm1(x), mask=mask)
    x = x + (a * self.ls1[...] if self.layer_scale else a)
    m = self.mlp(self.norm2(x))
    return x + (m * self.ls2[...] if self.layer_scale else m)


class PoolHead(nnx.Module):
  """SigLIP's multi-head attention pooling: a learned probe attends over the tokens."""

  def __init__(self, cfg: ViTConfig, *, dtype, rngs):
    self.probe = nnx.Param(jax.random.normal(rngs.params(), (1, 1, cfg.width)) * 0.02)
    self.attn = Attention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, tokens):
    probe = jnp.broadcast_to(self.probe[...], (tokens.shape[0], 1, tokens.shape[-1]))
    pooled = self.attn(probe, tokens)
    return (pooled + self.mlp(self.norm(pooled)))[:, 0]


class VisionTransformer(nnx.Module):
  """Normalized images [B, H, W, C] -> {'tokens': [B, (H/p)(W/p), width] patch tokens after
  the final norm, 'cls', 'registers' (DINOv2), 'pooled' (SigLIP head)}."""

  def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.patch_embed = _linear(rngs, cfg.patch_size ** 2 * cfg.channels, cfg.width, dtype)
    num_positions = cfg.grid ** 2 + int(cfg.cls_token)
    self.pos_embed = nnx.Param(jax.random.normal(rngs.params(), (num_positions, cfg.width)) * 0.02)
    if cfg.cls_token:
      self.cls = nnx.Param(jnp.zeros((1, cfg.width)))
    if cfg.num_registers:
      self.registers = nnx.Param(jnp.zeros((cfg.num_registers, cfg.width)))
    self.blocks = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    if cfg.pool_head:
      self.head = PoolHead(cfg, dtype=dtype, rngs=rngs)

  def patch_positions(self, h: int, w: int):
    """Position embeddings of an h×w patch grid, resized from the trained grid if needed."""
    cfg = self.cfg
    grid = self.pos_embed[...][int(cfg.cls_token):].reshape(cfg.grid, cfg.grid, cfg.width)
    if (h, w) != (cfg.grid, cfg.grid):
      rows = jnp.asarray(resize_matrix(cfg.grid, h, cfg.interpolation), jnp.float32)
      cols = jnp.asarray(resize_matrix(cfg.grid, w, cfg.interpolation), jnp.float32)
      grid = jnp.einsum("ih,hwd,jw->ijd", rows, grid, cols,
                        precision=jax.lax.Precision.HIGHEST)
    return grid.reshape(h * w, cfg.width)

  def __call__(self, images):
    cfg, p = self.cfg, self.cfg.patch_size
    b, height, width, _ = images.shape
    h, w = height // p, width // p
    patches = einops.rearrange(images[:, :h * p, :w * p], "b (h p) (w q) c -> b (h w) (p q c)",
                               p=p, q=p)
    x = self.patch_embed(patches) + self.patch_positions(h, w)
    prefix = []
    if cfg.cls_token:
      prefix.append(self.cls[...] + self.pos_embed[...][:1])
    if cfg.num_registers:           # registers carry no position (added after positions)
      prefix.append(self.registers[...])
    if prefix:
      prefix = jnp.broadcast_to(jnp.concatenate(prefix), (b, cfg.num_prefix_tokens, cfg.width))
      x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    out = {"tokens": x[:, cfg.num_prefix_tokens:]}
    if cfg.cls_token:
      out["cls"] = x[:, 0]
    if cfg.num_registers:
      out["registers"] = x[:, int(cfg.cls_token):cfg.num_prefix_tokens]
    if cfg.pool_head:
      out["pooled"] = self.head(x)
    return out


def normalize(frames, cfg: ViTConfig):
  """uint8 frames [..., H, W, C] -> the encoder's input (see `normalize_unit`)."""
  return normalize_unit(frames.astype(jnp.float32) / 255.0, cfg)


def normalize_unit(x, cfg: ViTConfig):
  """Images in [0, 1] [..., H, W, C] -> the encoder's input: resized to image_size
  (bilinear), gray repeated to the encoder's channels, scaled by its mean and std."""
  if x.shape[-1] != cfg.channels:
    x = jnp.repeat(x, cfg.channels // x.shape[-1], axis=-1)
  if x.shape[-3:-1] != (cfg.image_size, cfg.image_size):
    x = jax.image.resize(x, (*x.shape[:-3], cfg.image_size, cfg.image_size, cfg.channels),
                         "bilinear")
  return (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
