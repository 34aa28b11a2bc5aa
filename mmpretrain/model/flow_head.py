"""The flow head: how the transformer's visual positions are read out as a prediction.

With `model.flow_head.width = 0` it is one linear map of the final hidden state
(Transfusion's). With a width, it is the RAE paper's lever for high-dimensional latents
(its DiT^DH head; MAR's per-token MLP head is the same idea): a wide, shallow per-token
network that reads the backbone's state together with the noisy latent and the timestep,
so a latent token wider than a useful share of the backbone need not be carried through
every layer to be denoised.
"""
import jax.numpy as jnp
from flax import nnx

from mmpretrain.model import layers


class HeadBlock(nnx.Module):
  """Pre-norm residual SwiGLU of hidden size 2·width."""

  def __init__(self, width: int, cfg, *, rngs: nnx.Rngs):
    dtype, std = jnp.dtype(cfg.dtype), cfg.init_std
    self.norm = layers.RMSNorm(width, cfg.norm_eps, dtype)
    self.gate = layers.linear(width, 2 * width, dtype=dtype, std=std, axes=(None, "mlp"),
                              rngs=rngs)
    self.up = layers.linear(width, 2 * width, dtype=dtype, std=std, axes=(None, "mlp"),
                            rngs=rngs)
    self.down = layers.linear(2 * width, width, dtype=dtype, std=std, axes=("mlp", None),
                              rngs=rngs)

  def __call__(self, x):
    h = self.norm(x)
    return x + self.down(layers.swiglu(self.gate(h), self.up(h)))


class FlowHead(nnx.Module):
  """(final hidden state [T, d], noisy latent [T, patch_dim], timestep embedding [T, d])
  -> prediction [T, patch_dim] f32."""

  def __init__(self, cfg, patch_dim: int, *, rngs: nnx.Rngs):
    d_model, dtype, std = cfg.d_model, jnp.dtype(cfg.dtype), cfg.init_std
    width, self.dtype = cfg.flow_head.width, dtype
    self.cond = layers.linear(d_model, width, dtype=dtype, std=std, axes=("embed", None), rngs=rngs)
    self.latent = layers.linear(patch_dim, width, dtype=dtype, std=std, axes=("latent", None),
                                use_bias=True, rngs=rngs)
    self.blocks = nnx.List([HeadBlock(width, cfg, rngs=rngs)
                            for _ in range(cfg.flow_head.depth)])
    self.norm = layers.RMSNorm(width, cfg.norm_eps, dtype)
    self.out = layers.linear(width, patch_dim, dtype=dtype, std=std, axes=(None, "latent"),
                             use_bias=True, rngs=rngs, out_dtype=jnp.float32)

  def __call__(self, hidden, latents, time_embedding):
    x = self.cond(hidden + time_embedding.astype(hidden.dtype)) + self.latent(
        latents.astype(self.dtype))
    for block in self.blocks:
      x = block(x)
    return self.out(self.norm(x))
