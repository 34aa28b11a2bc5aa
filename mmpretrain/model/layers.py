"""Transformer building blocks: RoPE, attention (GQA, QK-norm), SwiGLU FFN.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, …) that
the sharding rules in the config map onto mesh axes.
"""
import jax
import jax.numpy as jnp
from flax import nnx


def dense_init(std: float, axes: tuple[str, ...]):
  """Normal init tagged with logical axes; sharding is applied later by mmpretrain.sharding."""
  return nnx.with_partitioning(nnx.initializers.normal(std), axes, eager_sharding=False)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, theta: float) -> jnp.ndarray:
  """Rotary embedding (rotate-half form). x: [B, L, H, D], positions: [B, L]."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs        # [B, L, D/2]
  sin, cos = jnp.sin(angles)[:, :, None], jnp.cos(angles)[:, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32 whatever the compute dtype."""

  def __init__(self, dim: int, eps: float, dtype):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=("norm",),
                           eager_sharding=False)
    self.eps, self.dtype = eps, dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...]).astype(self.dtype)


class Attention(nnx.Module):
  """Multi-head attention with grouped-query heads, RoPE and optional QK-norm."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.dtype)
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5

    def proj(heads, axes):
      return nnx.LinearGeneral(d, (heads, hd), use_bias=False, dtype=dtype,
                               kernel_init=dense_init(std, axes), rngs=rngs)

    self.q = proj(h, ("embed", "heads", "kv"))
    self.k = proj(k, ("embed", "kv_heads", "kv"))
    self.v = proj(k, ("embed", "kv_heads", "kv"))
    self.o = nnx.LinearGeneral((h, hd), d, axis=(-2, -1), use_bias=False, dtype=dtype,
                               kernel_init=dense_init(out_std, ("heads", "kv", "embed")),
                               rngs=rngs)
    self.q_norm = RMSNorm(hd, cfg.norm_eps, dtype) if cfg.qk_norm else None
    self.k_norm = RMSNorm(hd, cfg.norm_eps, dtype) if cfg.qk_norm else None
    self.rope_theta, self.impl = cfg.rope_theta, cfg.attention_impl

  def __call__(self, x, positions, mask):
    """x: tokens [B·L, d] (flat, see Transfusion.__call__); positions [B, L]."""
    batch, length = positions.shape
    def heads(t):
      return t.reshape(batch, length, *t.shape[1:])
    q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.impl)
    return self.o(out.reshape(batch * length, *out.shape[2:]))


class SwiGLU(nnx.Module):
  """Gated FFN: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d, f, dtype = cfg.d_model, cfg.mlp_dim, jnp.dtype(cfg.dtype)
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5
    self.gate = nnx.Linear(d, f, use_bias=False, dtype=dtype,
                           kernel_init=dense_init(std, ("embed", "mlp")), rngs=rngs)
    self.up = nnx.Linear(d, f, use_bias=False, dtype=dtype,
                         kernel_init=dense_init(std, ("embed", "mlp")), rngs=rngs)
    self.down = nnx.Linear(f, d, use_bias=False, dtype=dtype,
                           kernel_init=dense_init(out_std, ("mlp", "embed")), rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
