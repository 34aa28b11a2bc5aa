"""Attention over key chunks with an online softmax: memory O(L · chunk), never [L, L].

Each query q sees the keys k_start[q] ≤ k < k_end[q] (`masks.key_ranges`: the model's one
mask is exactly such a range per query). Queries and keys are cut into chunks of `chunk`
tokens; for each query chunk two loops run only over the key chunks some query in it can
see (for causal text about half of them): the first finds each query's largest score, the
second sums the probabilities and the output against it. The backward recomputes each
chunk's probabilities from the saved log-sum-exp instead of storing them, so training
memory is O(L · chunk) as well.

This is plain JAX: it compiles for TPU, GPU and CPU alike. XLA writes each
[B, heads, chunk, chunk] score block to memory and reads it back, so the passes over it
set the kernel's speed on TPU: the first loop's scores never leave its max, which is why
it runs the scores' matmul twice rather than rescale a running output by each block's new
maximum (flash attention's one pass, which reads the block twice more). Inside, q, k, v
are heads-major so the blocks' matmuls read their operands as they lie. A fused kernel
(Pallas) would keep the blocks out of memory altogether.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# The forward's output and log-sum-exp, which its backward reads, by name for the remat
# policy (model.remat_keep_attention): kept, the backward does not run the forward again.
RESIDUALS = "chunked_attention_residuals"


class KeyRanges(NamedTuple):
  """Per query, the visible keys start ≤ k < end; both [B, L] int32."""
  start: jax.Array
  end: jax.Array


# Inside the kernel q, k, v, out are heads-major, [B, heads, L, D], so that every block's
# matmuls read their operands as they lie; scores [B, heads, c, c].
_SCORES, _MIX = "bntd,bnsd->bnts", "bnts,bnsd->bntd"


def _dot(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def chunked_attention(q, k, v, ranges: KeyRanges, chunk: int):
  """Softmax attention. q, k, v [B, L, heads, D] (keys already repeated for grouped-query
  heads); `ranges` [B, L]. Returns [B, L, heads, D] in q's dtype."""
  chunk = min(chunk, q.shape[1])
  return heads_major_padded(lambda *a: _attention(*a, chunk), q, k, v, ranges, chunk)


def heads_major_padded(kernel, q, k, v, ranges: KeyRanges, multiple: int):
  """kernel(q, k, v, start, end) on q, k, v heads-major ([B, heads, L, D]) and padded to a
  multiple of `multiple` tokens (pad_ranges), its output back as [B, L, heads, D]."""
  length = q.shape[1]
  pad = -length % multiple
  if pad:
    widen = lambda t: jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q, k, v = widen(q), widen(k), widen(v)
  start, end = pad_ranges(ranges, multiple)
  heads_major = lambda t: jnp.swapaxes(t, 1, 2)
  out = kernel(heads_major(q), heads_major(k), heads_major(v), start, end)
  return heads_major(out)[:, :length]


def pad_ranges(ranges: KeyRanges, chunk: int) -> KeyRanges:
  """`ranges` for a length padded to a multiple of `chunk`: padded keys lie past every
  real query's range; a padded query sees only itself, so the last chunk's loop is no
  longer than its real queries need."""
  rows, length = ranges.start.shape
  padded = jnp.broadcast_to(jnp.arange(length, length + -length % chunk), (rows, -length % chunk))
  return KeyRanges(jnp.concatenate([ranges.start, padded], 1).astype(jnp.int32),
                   jnp.concatenate([ranges.end, padded + 1], 1).astype(jnp.int32))


def chunk_bounds(start, end, chunk):
  """Per query chunk, the first key chunk and one past the last that any of its queries
  (in any row) can see: [n] int32 each."""
  n = start.shape[1] // chunk
  first = start.reshape(-1, n, chunk).min(axis=(0, 2)) // chunk
  last = (end.reshape(-1, n, chunk).max(axis=(0, 2)) - 1) // chunk + 1
  return first, last


def _by_chunk(t, chunk):
  """[B, L] -> [n, B, chunk] (the scan's leading axis)."""
  return jnp.moveaxis(t.reshape(t.shape[0], -1, chunk), 1, 0)


def _by_chunk_of_heads(t, chunk):
  """[B, heads, L, ...] -> [n, B, heads, chunk, ...]."""
  return jnp.moveaxis(t.reshape(*t.shape[:2], -1, chunk, *t.shape[3:]), 2, 0)


def _from_chunks_of_heads(t):
  """The inverse of _by_chunk_of_heads."""
  t = jnp.moveaxis(t, 0, 2)
  return t.reshape(*t.shape[:2], -1, *t.shape[4:])


def _key_chunk(t, j, chunk):
  return jax.lax.dynamic_slice_in_dim(t, j * chunk, chunk, axis=2)


def _visible(start, end, j, chunk):
  """[B, 1, c_q, c_k]: which keys of key chunk j each query of the chunk sees."""
  keys = j * chunk + jnp.arange(chunk)
  return ((keys >= start[..., None]) & (keys < end[..., None]))[:, None]


# A row's running max before it has seen a key: finite, so exp(before − max) is 0, not NaN.
_NOTHING_SEEN = jnp.finfo(jnp.float32).min


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, start, end, chunk):
  return _forward(q, k, v, start, end, chunk)[0]


def _forward(q, k, v, start, end, chunk):
  first, last = chunk_bounds(start, end, chunk)
  batch, heads, _, dim = q.shape

  def query_chunk(_, xs):
    q_i, start_i, end_i, j0, j1 = xs
    def scores(j):
      s = _dot(_SCORES, q_i, _key_chunk(k, j, chunk)) * dim ** -0.5
      return jnp.where(_visible(start_i, end_i, j, chunk), s, _NOTHING_SEEN)
    def max_step(state):
      j, row_max = state
      return j + 1, jnp.maximum(row_max, scores(j).max(-1))
    _, row_max = jax.lax.while_loop(
        lambda s: s[0] < j1, max_step, (j0, jnp.full((batch, heads, chunk), _NOTHING_SEEN)))
    def key_step(state):
      j, out, row_sum = state
      probs = jnp.exp(scores(j) - row_max[..., None])
      out = out + _dot(_MIX, probs.astype(v.dtype), _key_chunk(v, j, chunk))
      return j + 1, out, row_sum + probs.sum(-1)
    init = (j0, jnp.zeros((batch, heads, chunk, dim), jnp.float32),
            jnp.zeros((batch, heads, chunk)))
    _, out, row_sum = jax.lax.while_loop(lambda s: s[0] < j1, key_step, init)
    out = out / row_sum[..., None]
    return None, (out.astype(q.dtype), row_max + jnp.log(row_sum))

  xs = (_by_chunk_of_heads(q, chunk), _by_chunk(start, chunk), _by_chunk(end, chunk), first,
        last)
  _, (out, logsumexp) = jax.lax.scan(query_chunk, None, xs)
  out = _from_chunks_of_heads(out)
  out, logsumexp = checkpoint_name(out, RESIDUALS), checkpoint_name(logsumexp, RESIDUALS)
  return out, (q, k, v, start, end, out, logsumexp)


def _backward(chunk, residuals, d_out):
  q, k, v, start, end, out, logsumexp = residuals
  first, last = chunk_bounds(start, end, chunk)
  scale = q.shape[-1] ** -0.5
  d_out = d_out.astype(q.dtype)
  # Softmax backward: dS = P ∘ (dP − rowsum(dP ∘ P)), and rowsum(dP ∘ P) = rowsum(dO ∘ O).
  row = jnp.einsum("bntd,bntd->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))

  def query_chunk(grads, xs):
    q_i, d_out_i, row_i, lse_i, start_i, end_i, j0, j1 = xs
    def key_step(state):
      j, d_q, d_k, d_v = state
      k_j, v_j = _key_chunk(k, j, chunk), _key_chunk(v, j, chunk)
      scores = _dot(_SCORES, q_i, k_j) * scale
      # In the compute dtype as the scores' matmul writes them: the two passes below read
      # half the bytes (dS is rounded to it as well before its matmuls).
      probs = jnp.where(_visible(start_i, end_i, j, chunk),
                        jnp.exp(scores - lse_i[..., None]), 0.0).astype(q.dtype)
      d_probs = _dot(_SCORES, d_out_i, v_j)
      d_scores = (probs * (d_probs - row_i[..., None]) * scale).astype(q.dtype)
      add = lambda acc, g: jax.lax.dynamic_update_slice_in_dim(
          acc, _key_chunk(acc, j, chunk) + g, j * chunk, axis=2)
      d_k = add(d_k, _dot("bnts,bntd->bnsd", d_scores, q_i))
      d_v = add(d_v, _dot("bnts,bntd->bnsd", probs, d_out_i))
      return j + 1, d_q + _dot(_MIX, d_scores, k_j), d_k, d_v
    init = (j0, jnp.zeros(q_i.shape, jnp.float32), *grads)
    _, d_q, d_k, d_v = jax.lax.while_loop(lambda s: s[0] < j1, key_step, init)
    return (d_k, d_v), d_q.astype(q.dtype)

  zeros = jnp.zeros(k.shape, jnp.float32)
  xs = (_by_chunk_of_heads(q, chunk), _by_chunk_of_heads(d_out, chunk),
        _by_chunk_of_heads(row, chunk), logsumexp, _by_chunk(start, chunk),
        _by_chunk(end, chunk), first, last)
  (d_k, d_v), d_q = jax.lax.scan(query_chunk, (zeros, zeros), xs)
  d_q = _from_chunks_of_heads(d_q)
  return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None, None


_attention.defvjp(_forward, _backward)
