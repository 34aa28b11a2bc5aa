"""Attention kernels behind one call: `attend(q, k, v, visible, impl)`.

Training passes the mask as a key range per query (masks.key_ranges); each kernel reads
it its own way:
- `chunked` (model/chunked_attention.py): plain JAX over chunks of keys with an online
  softmax, never an [L, L] tensor; the choice on TPU and GPU, where rows of thousands of
  tokens would make the dense scores the largest tensors of the step.
- `pallas` (model/flash_attention.py): the same contract as a fused Pallas TPU kernel whose
  score blocks never leave the chip's VMEM; run by Pallas' interpreter on CPU.
- `xla` (model/dense_attention.py): dense scores in the compute dtype, the mask built
  inside the layer from the ranges.
- `cudnn`: `jax.nn.dot_product_attention` on cuDNN (GPU).
- `einsum`: dense, written out with a custom VJP for XLA:CPU, where the autodiff backward
  is slow: the forward keeps the softmax probabilities in the compute dtype, and the
  backward uses the identity rowsum(dP ∘ P) = rowsum(dO ∘ O) (an [T] reduction over
  head_dim instead of over S) and runs all four matmuls with compute-dtype operands and
  f32 accumulation.
`auto` picks `einsum` on CPU (the demo's short rows), `chunked` elsewhere.
"""
import jax
import jax.numpy as jnp

from mmpretrain.config_rules import ATTENTION_IMPLS
from mmpretrain.model.chunked_attention import KeyRanges, chunked_attention
from mmpretrain.model.dense_attention import dense_attention
from mmpretrain.model.flash_attention import flash_attention
from mmpretrain.model.masks import ranges_mask

# The kernels that read the mask as a key range per query and never build [L, L].
RANGE_IMPLS = ("chunked", "pallas")


def resolve(impl: str, platform: str | None = None) -> str:
  """The implementation `auto` stands for on `platform` (default: jax's default backend);
  others unchanged."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}: pick one of {ATTENTION_IMPLS}")
  platform = platform or jax.default_backend()
  if impl == "auto":
    return "einsum" if platform == "cpu" else "chunked"
  if impl == "pallas" and platform == "gpu":
    raise ValueError("model.attention_impl=pallas is a TPU kernel: on GPU use cudnn, "
                     "chunked or xla")
  return impl


def for_cache(impl: str) -> str:
  """The implementation for a few new tokens against a KV cache, where the mask is a small
  [T, S] and a key range per query does not describe the cache's unwritten slots."""
  impl = resolve(impl)
  return "xla" if impl in RANGE_IMPLS else impl


def attend(q, k, v, visible, impl: str, chunk: int = 512):
  """Softmax attention. q [B, T, heads, D]; k, v [B, S, kv_heads, D] (grouped-query when
  kv_heads < heads); `visible`: the masks.key_ranges of a whole row's queries (S = T), or
  a bool mask [B or 1, 1, T, S], True = attend (a KV cache's). `chunk`: tokens per chunk
  or block of `chunked` and `pallas`. Returns [B, T, heads, D] in q's dtype."""
  impl = resolve(impl)
  if isinstance(visible, KeyRanges) and impl not in RANGE_IMPLS:
    # Built here, inside each layer, so XLA fuses the comparison into the scores' softmax
    # rather than store an [L, L] mask for every layer to read.
    visible = ranges_mask(visible, k.shape[1])
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=visible, implementation=impl)
  # Grouped-query heads share keys and values: repeat them (small, [B, S, kv_heads, D];
  # autodiff sums their gradients back); a grouped 5-D layout is slower on XLA:CPU.
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  if impl == "chunked":
    return chunked_attention(q, k, v, visible, chunk)
  if impl == "pallas":
    # Pallas' interpreter stands in for the TPU on CPU (tests, debugging in a notebook).
    return flash_attention(q, k, v, visible, block_q=chunk, block_k=chunk,
                           interpret=jax.default_backend() == "cpu")
  if impl == "xla":
    return dense_attention(q, k, v, visible)
  return _einsum_attention(q, k, v, visible)


# q, k, v, out [B, T|S, heads, D]; scores and probabilities [B, heads, T, S].
_SCORES, _MIX = "btnd,bsnd->bnts", "bnts,bsnd->btnd"


def _dot(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _einsum_attention(q, k, v, mask):
  return _forward(q, k, v, mask)[0]


def _forward(q, k, v, mask):
  scale = q.shape[-1] ** -0.5
  scores = jnp.where(mask, _dot(_SCORES, q, k) * scale, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = _dot(_MIX, probs, v).astype(q.dtype)
  return out, (q, k, v, mask, probs, out)


def _backward(residuals, d_out):
  q, k, v, _, probs, out = residuals
  scale = q.shape[-1] ** -0.5
  d_out = d_out.astype(q.dtype)
  d_v = _dot("bnts,btnd->bsnd", probs, d_out)
  d_probs = _dot("btnd,bsnd->bnts", d_out, v)
  # Softmax backward: dS = P ∘ (dP − rowsum(dP ∘ P)), and rowsum(dP ∘ P) = rowsum(dO ∘ O).
  row = jnp.einsum("btnd,btnd->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_scores = (probs.astype(jnp.float32) * (d_probs - row[..., None]) * scale).astype(q.dtype)
  d_q = _dot(_MIX, d_scores, k)
  d_k = _dot("bnts,btnd->bsnd", d_scores, q)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_einsum_attention.defvjp(_forward, _backward)
