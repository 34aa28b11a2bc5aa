"""Transformer building blocks: RoPE, attention (GQA, QK-norm), SwiGLU FFN.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, …) that
the sharding rules in the config map onto mesh axes.
"""
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain.model import attention


def dense_init(std: float, axes: tuple[str, ...]):
  """Normal init tagged with logical axes; sharding is applied later by mmpretrain.sharding."""
  return nnx.with_partitioning(nnx.initializers.normal(std), axes, eager_sharding=False)


# The axis nnx.vmap puts in front of a scanned layer stack's parameters (one per layer).
LAYER_AXIS = "layers"

# Which tokens multiply a parameter, read by FLOP counts (scaling/flops.py). Unset: every
# token. TEXT / VISUAL: only tokens of that modality (the LM head; the flow head and
# modality twins). ROUTED: a stack of experts of which a token multiplies the k it is
# routed to. LOOKUP: a table read by index, never multiplied (embeddings).
USED_BY = "used_by"
TEXT, VISUAL, ROUTED, LOOKUP = "text", "visual", "routed", "lookup"


def mark_used_by(module: nnx.Module, tokens: str) -> nnx.Module:
  """Annotates every parameter of `module` with which tokens multiply it; returns it."""
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Param):
      node.set_metadata(USED_BY, tokens)
  return module


def logical_axes(variable) -> tuple:
  return tuple(variable.get_metadata().get("out_sharding") or ())


def unstacked_ndim(variable) -> int:
  """The rank of one layer's parameter: a scanned stack's layer axis is not counted."""
  return variable.get_value().ndim - logical_axes(variable).count(LAYER_AXIS)


def linear(in_features, out_features, *, dtype, std: float, axes: tuple[str, ...], rngs,
           use_bias: bool = False, out_dtype=None, **kwargs) -> nnx.LinearGeneral:
  """A dense layer: logical-axis normal init and f32-accumulating matmuls.

  The f32 kernel is cast to `dtype` inside the matmul, so its gradient comes back in f32
  without a bf16 rounding; `out_dtype` (default `dtype`) lets read-outs such as the LM head
  emit f32 straight from the f32 accumulator instead of rounding to bf16 and back.
  """
  return nnx.LinearGeneral(in_features, out_features, use_bias=use_bias, dtype=dtype,
                           promote_dtype=_cast_activations, dot_general=mixed_precision_dot_general,
                           preferred_element_type=out_dtype, kernel_init=dense_init(std, axes),
                           rngs=rngs, **kwargs)


def _cast_activations(arrays, dtype):
  """Flax's promote_dtype hook: inputs and bias to the compute dtype, the kernel untouched."""
  inputs, kernel, bias = arrays
  return inputs.astype(dtype), kernel, None if bias is None else bias.astype(dtype)


def mixed_precision_dot_general(lhs, rhs, dimension_numbers, precision=None,
                                preferred_element_type=None, out_sharding=None):
  """`dot_general` for Flax layers: activations `lhs` in the compute dtype, the kernel
  `rhs` in its parameter dtype (f32), products summed in f32.

  The result has `preferred_element_type`, or else the activations' dtype. In bf16 the
  backward pass is written out so its two matmuls also take bf16 operands with f32
  accumulation: autodiff of `preferred_element_type=f32` would hand them an f32 cotangent,
  and XLA:CPU only uses its bf16 kernels (2× the f32 rate) for bf16×bf16→f32 dots.
  Supports the Linear/LinearGeneral pattern: trailing lhs axes contract leading rhs axes.
  """
  del precision, out_sharding
  (lhs_contract, rhs_contract), batch_dims = dimension_numbers
  num_contract = len(lhs_contract)
  if (any(batch_dims) or tuple(rhs_contract) != tuple(range(num_contract))
      or tuple(lhs_contract) != tuple(range(lhs.ndim - num_contract, lhs.ndim))):
    raise NotImplementedError(f"unsupported dimension_numbers {dimension_numbers}")
  out_dtype = jnp.dtype(preferred_element_type or lhs.dtype)
  if lhs.dtype == jnp.float32:
    return jax.lax.dot_general(lhs, rhs.astype(lhs.dtype), dimension_numbers).astype(out_dtype)
  contract = math.prod(rhs.shape[:num_contract])
  out = _mixed_matmul(lhs.reshape(-1, contract), rhs.reshape(contract, -1), out_dtype, 1, False)
  return out.reshape(*lhs.shape[:lhs.ndim - num_contract], *rhs.shape[num_contract:])


def expert_matmul(x, w, out_dtype=None, contract: int = 1):
  """Per-expert matmuls x [E, tokens..., K...] @ w [E, K..., N...] -> [E, tokens..., N...]
  (one or more token axes after the expert axis; x's last `contract` axes K are
  contracted, so rows kept as tiles [.., d/128, 128] go in without a relayout), summed in
  f32, with the same bf16 backward as the dense layers. The result has `out_dtype`, or
  else x's dtype."""
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  if x.dtype == jnp.float32:
    return jax.lax.dot_general(x, w.astype(x.dtype),
                               _forward_dims(x.ndim, contract, batched=True)).astype(out_dtype)
  return _mixed_matmul(x, w, out_dtype, contract, True)


def _forward_dims(x_ndim: int, contract: int, batched: bool):
  """x [(E,) tokens..., K...] · w [(E,) K..., N...]: the dot_general dimension numbers."""
  b = int(batched)
  batch = tuple(range(b))
  return ((tuple(range(x_ndim - contract, x_ndim)), tuple(range(b, b + contract))),
          (batch, batch))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mixed_matmul(x, w, out_dtype, contract: int, batched: bool):
  return _mixed_matmul_forward(x, w, out_dtype, contract, batched)[0]


def _mixed_matmul_forward(x, w, out_dtype, contract: int, batched: bool):
  out = jax.lax.dot_general(x, w.astype(x.dtype), _forward_dims(x.ndim, contract, batched),
                            preferred_element_type=jnp.float32)
  return out.astype(out_dtype), (x, w)


def _mixed_matmul_backward(out_dtype, contract, batched, residuals, d_out):
  del out_dtype
  x, w = residuals
  b = int(batched)
  batch = tuple(range(b))
  outputs = w.ndim - b - contract                    # the N axes, last in w and in d_out
  d_out = d_out.astype(x.dtype)
  d_x = jax.lax.dot_general(
      d_out, w.astype(x.dtype),
      ((tuple(range(d_out.ndim - outputs, d_out.ndim)), tuple(range(w.ndim - outputs, w.ndim))),
       (batch, batch)), preferred_element_type=jnp.float32)
  tokens = tuple(range(b, x.ndim - contract))
  if len(tokens) == 1:
    # xᵀ·g contracts the token axis of two row-major operands, a layout XLA:CPU runs below
    # the f32 rate. Contracting it as two axes ([1, T, ·]) makes XLA copy xᵀ into
    # row-major form and take its bf16 kernel (docs/benchmarks.md, "Why model/layers.py
    # is written as it is").
    x, d_out = jnp.expand_dims(x, b), jnp.expand_dims(d_out, b)
    tokens = (b, b + 1)
  d_w = jax.lax.dot_general(x, d_out, ((tokens, tokens), (batch, batch)),
                            preferred_element_type=jnp.float32)
  return d_x.astype(x.dtype), d_w.astype(w.dtype)


_mixed_matmul.defvjp(_mixed_matmul_forward, _mixed_matmul_backward)


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
    d_model, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.dtype)
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5

    def proj(heads, axes):
      return linear(d_model, (heads, hd), dtype=dtype, std=std, axes=axes, rngs=rngs)

    self.q = proj(h, ("embed", "heads", "kv"))
    self.k = proj(k, ("embed", "kv_heads", "kv"))
    self.v = proj(k, ("embed", "kv_heads", "kv"))
    self.o = linear((h, hd), d_model, axis=(-2, -1), dtype=dtype, std=out_std,
                    axes=("heads", "kv", "embed"), rngs=rngs)
    self.q_norm = RMSNorm(hd, cfg.norm_eps, dtype) if cfg.qk_norm else None
    self.k_norm = RMSNorm(hd, cfg.norm_eps, dtype) if cfg.qk_norm else None
    self.rope_theta = cfg.rope_theta
    self.impl, self.chunk = cfg.attention_impl, cfg.attention_chunk

  def project(self, x, positions):
    """(q, k, v) [B, L, heads, head_dim] of tokens x [B·L, d], QK-normed and rotated."""
    batch, length = positions.shape
    def heads(t):
      return t.reshape(batch, length, *t.shape[1:])
    q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta), v

  def output(self, out):
    """The output projection of attention's result [B, L, heads, head_dim], as [B·L, d]."""
    return self.o(out.reshape(-1, *out.shape[2:]))

  def __call__(self, x, positions, visible):
    """x: tokens [B·L, d] (flat, see Transfusion.__call__); positions [B, L]; `visible`: see
    attention.attend."""
    q, k, v = self.project(x, positions)
    return self.output(attention.attend(q, k, v, visible, self.impl, self.chunk))

  def decode(self, x, positions, mask, cache, index):
    """New tokens x [B·T, d] at cache slots index..index+T-1 attend to every written slot.

    cache: (keys, values) [B, S, kv_heads, head_dim]; mask [B, 1, T, S]. Returns the
    output and the cache with this chunk's keys and values written in.
    """
    q, k, v = self.project(x, positions)
    out, cache = attend_with_cache(q, k, v, mask, cache, index, self.impl)
    return self.output(out), cache


def attend_with_cache(q, k, v, mask, cache, index, impl: str):
  """Writes k, v into the cache at slots index.. and attends q to every written slot:
  (attention's result, the cache)."""
  keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), index, axis=1)
  values = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), index, axis=1)
  return attention.attend(q, keys, values, mask, attention.for_cache(impl)), (keys, values)


class SwiGLU(nnx.Module):
  """Gated FFN: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, mlp_dim: int | None = None):
    d_model, f, dtype = cfg.d_model, mlp_dim or cfg.mlp_dim, jnp.dtype(cfg.dtype)
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5
    self.gate = linear(d_model, f, dtype=dtype, std=std, axes=("embed", "mlp"), rngs=rngs)
    self.up = linear(d_model, f, dtype=dtype, std=std, axes=("embed", "mlp"), rngs=rngs)
    self.down = linear(f, d_model, dtype=dtype, std=out_std, axes=("mlp", "embed"), rngs=rngs)

  def __call__(self, x):
    return self.down(swiglu(self.gate(x), self.up(x)))


def paired_swiglu(first: SwiGLU, second: SwiGLU, x, use_second):
  """Per token, second(x) where `use_second` [T] else first(x), for x [T, d]: the two
  SwiGLUs run as one with both hidden layers side by side, the one a token does not use
  zeroed. The FLOPs of running both, but one matmul each way and no select over [T, d]:
  the cheaper form for narrow FFNs such as an MoE's per-modality shared experts; for wide
  ones the select is cheaper (docs/benchmarks.md, "Why model/layers.py is written as it
  is")."""
  def stacked(name: str, axis: int):
    return jnp.stack([getattr(ffn, name).kernel[...] for ffn in (first, second)], axis)
  x = x.astype(first.gate.dtype)
  gate = mixed_precision_dot_general(x, stacked("gate", 1), (((1,), (0,)), ((), ())))
  up = mixed_precision_dot_general(x, stacked("up", 1), (((1,), (0,)), ((), ())))
  keep = jax.nn.one_hot(use_second.astype(jnp.int32), 2, dtype=gate.dtype)[..., None]
  act = swiglu(gate, up) * keep
  return mixed_precision_dot_general(act, stacked("down", 0), (((1, 2), (0, 1)), ((), ())))


def swiglu(gate, up):
  """silu(gate) · up, computed in f32 and returned in the inputs' dtype: CPUs without bf16
  arithmetic emulate it, slowly enough to show in a whole MoE layer, and on accelerators
  the upcast is free inside the fusion."""
  return (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(gate.dtype)
