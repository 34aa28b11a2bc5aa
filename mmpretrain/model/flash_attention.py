"""Flash attention over key ranges as Pallas TPU kernels, forward and backward.

The contract is chunked_attention's: query i of row b sees the keys
start[b, i] ≤ j < end[b, i] (`masks.key_ranges`). Queries and keys are cut into blocks;
each (query block, key block) pair is one step of a kernel whose scores and
probabilities stay in VMEM, so unlike the plain-JAX chunked kernel no [block, block]
tensor ever goes to HBM. Per row and query block the first and one-past-last key block
its queries can see are computed outside and prefetched into SMEM: a pair outside them
is skipped, and the visited pairs apply the elementwise mask.

The forward (here) runs one online softmax (running max, sum and output in f32 scratch)
and saves the output and the log-sum-exp per query. The backward (model/flash_backward.py)
recomputes the probabilities from the log-sum-exp in two kernels: one walks the query
blocks for each key block (dK, dV), the other the key blocks for each query block (dQ),
so each accumulates its gradient in VMEM and writes it once. What they share is in
model/flash_blocks.py.

Inside, q, k, v are heads-major, [B, heads, L, D], so each block is one contiguous
[block, D] tile; per-query vectors (ranges, log-sum-exp) are [.., 1, L] rows, dense in
the TPU's lanes.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmpretrain.model.chunked_attention import RESIDUALS, KeyRanges, heads_major_padded
from mmpretrain.model.flash_backward import key_value_grads_call, query_grads_call
from mmpretrain.model.flash_blocks import (NOTHING_SEEN, Tiling, as_column, as_row, as_rows,
                                           compiler_params, cost_estimate, dot,
                                           key_block_bounds, masked_scores, query_major_grid,
                                           query_major_specs, visits)

# A TPU vector register's lanes. Both block sizes are the minor dim of some block (the
# per-query rows [1, block_q], the scores [.., block_k]), which Mosaic tiles by this: a
# block shorter than its array is a multiple of it.
_LANES = 128


def flash_attention(q, k, v, ranges: KeyRanges, *, block_q: int = 512, block_k: int = 512,
                    interpret: bool = False):
  """Softmax attention. q, k, v [B, L, heads, D] (keys already repeated for grouped-query
  heads); `ranges` [B, L]. Returns [B, L, heads, D] in q's dtype. `block_q`, `block_k`:
  tokens per query and key block, multiples of 128 on TPU (shrunk for shorter rows).
  `interpret` runs the kernels in Pallas' interpreter (any backend: the CPU tests)."""
  length = q.shape[1]
  tiling = Tiling(_fit_block(block_q, length), _fit_block(block_k, length), interpret)
  return heads_major_padded(lambda *a: _flash(*a, tiling), q, k, v, ranges,
                            math.lcm(tiling.block_q, tiling.block_k))


def _fit_block(block: int, length: int) -> int:
  """`block`, shrunk for a row shorter than it: to the row (a block as long as the array
  needs no tiling) or, from one tile up, to the row rounded up to whole tiles."""
  if length < _LANES:
    return min(block, length)
  return min(block, -(-length // _LANES) * _LANES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, start, end, tiling):
  return _forward(q, k, v, start, end, tiling)[0]


def _forward(q, k, v, start, end, tiling):
  bounds = key_block_bounds(start, end, tiling)
  out, logsumexp = _forward_call(q, k, v, as_rows(start), as_rows(end), bounds, tiling)
  out, logsumexp = checkpoint_name(out, RESIDUALS), checkpoint_name(logsumexp, RESIDUALS)
  return out, (q, k, v, start, end, out, logsumexp)


def _backward(tiling, residuals, d_out):
  q, k, v, start, end, out, logsumexp = residuals
  d_out = d_out.astype(q.dtype)
  # Softmax backward: dS = P ∘ (dP − rowsum(dP ∘ P)), and rowsum(dP ∘ P) = rowsum(dO ∘ O),
  # a reduction over D rather than over the keys.
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)[:, :, None]
  bounds = key_block_bounds(start, end, tiling)
  inputs = (as_rows(start), as_rows(end), d_out, logsumexp, row)
  d_k, d_v = key_value_grads_call(q, k, v, *inputs, bounds, tiling)
  d_q = query_grads_call(q, k, v, *inputs, bounds, tiling)
  return d_q, d_k, d_v, None, None


_flash.defvjp(_forward, _backward)


# --- Forward ------------------------------------------------------------------------------


def _forward_kernel(first_ref, last_ref, start_ref, end_ref, q_ref, k_ref, v_ref,
                    out_ref, logsumexp_ref, max_ref, sum_ref, acc_ref, *, scale):
  """One online-softmax step of block pair (i, j); the key blocks j run innermost, in
  order."""
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    max_ref[...] = jnp.full(max_ref.shape, NOTHING_SEEN, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(visits(first_ref, last_ref, b, i, j))
  def _accumulate():
    block_k = k_ref.shape[0]
    scores = masked_scores(q_ref[...], k_ref[...], as_column(start_ref[...]),
                            as_column(end_ref[...]), j * block_k, scale)
    before = max_ref[...]
    now = jnp.maximum(before, scores.max(1, keepdims=True))
    correction = jnp.exp(before - now)
    probs = jnp.exp(scores - now)
    sum_ref[...] = correction * sum_ref[...] + probs.sum(1, keepdims=True)
    acc_ref[...] = correction * acc_ref[...] + dot(probs.astype(v_ref.dtype), v_ref[...])
    max_ref[...] = now

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    out_ref[...] = (acc_ref[...] / sum_ref[...]).astype(out_ref.dtype)
    logsumexp_ref[...] = as_row(max_ref[...] + jnp.log(sum_ref[...]))


def _forward_call(q, k, v, start, end, bounds, tiling):
  """out [B, heads, L, D] and the log-sum-exp per query [B, heads, 1, L] (f32)."""
  batch, heads, length, dim = q.shape
  specs = query_major_specs(tiling, dim)
  grid_spec = query_major_grid(
      tiling, q.shape,
      [specs.range_row, specs.range_row, specs.query_tile, specs.key_tile, specs.key_tile],
      [specs.query_tile, specs.query_row],
      [pltpu.VMEM((tiling.block_q, 1), jnp.float32), pltpu.VMEM((tiling.block_q, 1), jnp.float32),
       pltpu.VMEM((tiling.block_q, dim), jnp.float32)])
  return pl.pallas_call(
      functools.partial(_forward_kernel, scale=dim ** -0.5),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, 1, length), jnp.float32)],
      compiler_params=compiler_params(),
      cost_estimate=cost_estimate(q, tiling, matmuls=2, streamed=(k, v),
                                   streamed_block=tiling.block_k, resident=(q, q)),
      interpret=tiling.interpret,
  )(*bounds, start, end, q, k, v)
