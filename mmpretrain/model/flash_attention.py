"""Flash attention over key ranges as Pallas TPU kernels, forward and backward.

The contract is chunked_attention's: query i of row b sees the keys
start[b, i] ≤ j < end[b, i] (`masks.key_ranges`). Queries and keys are cut into blocks;
each (query block, key block) pair is one step of a kernel whose scores and
probabilities stay in VMEM, so unlike the plain-JAX chunked kernel no [block, block]
tensor ever goes to HBM. Per row and query block the first and one-past-last key block
its queries can see are computed outside and prefetched into SMEM: a pair outside them
is skipped, and the visited pairs apply the elementwise mask.

The forward runs one online softmax (running max, sum and output in f32 scratch) and
saves the output and the log-sum-exp per query. The backward recomputes the
probabilities from the log-sum-exp in two kernels: one walks the query blocks for each
key block (dK, dV), the other the key blocks for each query block (dQ), so each
accumulates its gradient in VMEM and writes it once.

Inside, q, k, v are heads-major, [B, heads, L, D], so each block is one contiguous
[block, D] tile; per-query vectors (ranges, log-sum-exp) are [.., 1, L] rows, dense in
the TPU's lanes.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmpretrain.model.chunked_attention import RESIDUALS, KeyRanges, pad_ranges

# A row's running max before it has seen a key, and the score of a key it may not see:
# finite, so exp(masked − max) is 0 once a visible key has set the max, never NaN. Before
# that, a block a row sees nothing of adds exp(0) = 1 per key to its sum and output,
# which the correction exp(before − max) = 0 wipes when its first visible key arrives
# (every query sees at least one key).
_NOTHING_SEEN = float(jnp.finfo(jnp.float32).min)

# dot_general's dimension numbers for a · bᵀ (both operands' last dims contracted, so no
# transpose is made) and for a · b.
_TRANSPOSE_B = (((1,), (1,)), ((), ()))
_PLAIN = (((1,), (0,)), ((), ()))

# A TPU vector register's lanes. Both block sizes are the minor dim of some block (the
# per-query rows [1, block_q], the scores [.., block_k]), which Mosaic tiles by this: a
# block shorter than its array is a multiple of it.
_LANES = 128


class _Tiling(NamedTuple):
  """The static choices of one call (hashable: custom_vjp's non-differentiable arg)."""
  block_q: int
  block_k: int
  interpret: bool


def flash_attention(q, k, v, ranges: KeyRanges, *, block_q: int = 512, block_k: int = 512,
                    interpret: bool = False):
  """Softmax attention. q, k, v [B, L, heads, D] (keys already repeated for grouped-query
  heads); `ranges` [B, L]. Returns [B, L, heads, D] in q's dtype. `block_q`, `block_k`:
  tokens per query and key block, multiples of 128 on TPU (shrunk for shorter rows).
  `interpret` runs the kernels in Pallas' interpreter (any backend: the CPU tests)."""
  length = q.shape[1]
  block_q, block_k = _fit_block(block_q, length), _fit_block(block_k, length)
  padded_to = math.lcm(block_q, block_k)
  pad = -length % padded_to
  if pad:
    widen = lambda t: jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q, k, v = widen(q), widen(k), widen(v)
  start, end = pad_ranges(ranges, padded_to)
  heads_major = lambda t: jnp.swapaxes(t, 1, 2)
  out = _flash(heads_major(q), heads_major(k), heads_major(v), start, end,
               _Tiling(block_q, block_k, interpret))
  return heads_major(out)[:, :length]


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
  bounds = _key_block_bounds(start, end, tiling)
  out, logsumexp = _forward_call(q, k, v, _as_rows(start), _as_rows(end), bounds, tiling)
  out, logsumexp = checkpoint_name(out, RESIDUALS), checkpoint_name(logsumexp, RESIDUALS)
  return out, (q, k, v, start, end, out, logsumexp)


def _backward(tiling, residuals, d_out):
  q, k, v, start, end, out, logsumexp = residuals
  d_out = d_out.astype(q.dtype)
  # Softmax backward: dS = P ∘ (dP − rowsum(dP ∘ P)), and rowsum(dP ∘ P) = rowsum(dO ∘ O),
  # a reduction over D rather than over the keys.
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)[:, :, None]
  bounds = _key_block_bounds(start, end, tiling)
  inputs = (_as_rows(start), _as_rows(end), d_out, logsumexp, row)
  d_k, d_v = _key_value_grads_call(q, k, v, *inputs, bounds, tiling)
  d_q = _query_grads_call(q, k, v, *inputs, bounds, tiling)
  return d_q, d_k, d_v, None, None


_flash.defvjp(_forward, _backward)


def _as_rows(per_query):
  """[B, L] -> [B, 1, L]: a block of it is a [1, block] row, whole tiles of lanes."""
  return per_query[:, None]


# --- Which block pairs run ----------------------------------------------------------------


def _key_block_bounds(start, end, tiling):
  """Per row and query block, the first key block and one past the last that any of its
  queries sees: [B, n_q] int32 each."""
  rows = start.shape[0]
  first = start.reshape(rows, -1, tiling.block_q).min(-1) // tiling.block_k
  last = (end.reshape(rows, -1, tiling.block_q).max(-1) - 1) // tiling.block_k + 1
  return first.astype(jnp.int32), last.astype(jnp.int32)


def _query_block_bounds(first, last, key_blocks):
  """Per row and key block, the first query block and one past the last that visit it
  (both 0 where none does): [B, n_k] int32 each."""
  query_blocks = first.shape[1]
  j = jnp.arange(key_blocks)
  visits = (first[..., None] <= j) & (j < last[..., None])      # [B, n_q, n_k]
  i = jnp.arange(query_blocks)[:, None]
  hi = jnp.where(visits, i + 1, 0).max(1)
  lo = jnp.minimum(jnp.where(visits, i, query_blocks).min(1), hi)
  return lo.astype(jnp.int32), hi.astype(jnp.int32)


def _clamp_to_visited(step, lo, hi):
  """The block a grid step reads: the step's own inside the visited range lo..hi-1, else
  the nearest visited one, so a skipped step fetches nothing new (Pallas copies a block
  only when its index changes)."""
  return jnp.minimum(jnp.maximum(step, lo), jnp.maximum(hi - 1, lo))


def _visits(first_ref, last_ref, b, i, j):
  """Whether query block i of row b sees anything of key block j."""
  return (first_ref[b, i] <= j) & (j < last_ref[b, i])


class _Specs(NamedTuple):
  """The BlockSpecs of one grid's operands: a [1, block_q] row of the ranges, a
  [block_q, D] or [block_k, D] tile of one head, a [1, block_q] row of one head's
  per-query f32 vectors."""
  range_row: pl.BlockSpec
  query_tile: pl.BlockSpec
  key_tile: pl.BlockSpec
  query_row: pl.BlockSpec


def _query_major_specs(tiling, dim):
  """Grid (row b, head h, query block i, key block j), prefetched the key-block bounds
  first, last [B, n_q]: a skipped key block reads the nearest visited one."""
  def key_block(b, i, j, first, last):
    return _clamp_to_visited(j, first[b, i], last[b, i])
  block_q, block_k = tiling.block_q, tiling.block_k
  return _Specs(
      range_row=pl.BlockSpec((None, 1, block_q), lambda b, h, i, j, *_: (b, 0, i)),
      query_tile=pl.BlockSpec((None, None, block_q, dim), lambda b, h, i, j, *_: (b, h, i, 0)),
      key_tile=pl.BlockSpec((None, None, block_k, dim),
                            lambda b, h, i, j, *bounds: (b, h, key_block(b, i, j, *bounds), 0)),
      query_row=pl.BlockSpec((None, None, 1, block_q), lambda b, h, i, j, *_: (b, h, 0, i)))


def _key_major_specs(tiling, dim):
  """Grid (row b, head h, key block j, query block i), prefetched first, last [B, n_q]
  (for the kernel) and the query-block bounds lo, hi [B, n_k]: a skipped query block
  reads the nearest visited one."""
  def query_block(b, j, i, first, last, lo, hi):
    return _clamp_to_visited(i, lo[b, j], hi[b, j])
  block_q, block_k = tiling.block_q, tiling.block_k
  return _Specs(
      range_row=pl.BlockSpec(
          (None, 1, block_q), lambda b, h, j, i, *bounds: (b, 0, query_block(b, j, i, *bounds))),
      query_tile=pl.BlockSpec(
          (None, None, block_q, dim),
          lambda b, h, j, i, *bounds: (b, h, query_block(b, j, i, *bounds), 0)),
      key_tile=pl.BlockSpec((None, None, block_k, dim), lambda b, h, j, i, *_: (b, h, j, 0)),
      query_row=pl.BlockSpec(
          (None, None, 1, block_q),
          lambda b, h, j, i, *bounds: (b, h, 0, query_block(b, j, i, *bounds))))


# --- Block arithmetic shared by the kernels -----------------------------------------------


def _dot(a, b, dims=_PLAIN):
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _visible(keys, start, end):
  return (keys >= start) & (keys < end)


def _as_column(row):
  """[1, n] -> [n, 1]: a per-query row against scores whose queries run down the rows."""
  return row.reshape(row.shape[1], 1)


def _as_row(column):
  """[n, 1] -> [1, n], the inverse of _as_column."""
  return column.reshape(1, column.shape[0])


def _masked_scores(q, k, start, end, first_key, scale):
  """Scaled scores [block_q, block_k] of a block pair, _NOTHING_SEEN where masked; start,
  end [block_q, 1]."""
  scores = _dot(q, k, _TRANSPOSE_B) * scale
  keys = first_key + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  return jnp.where(_visible(keys, start, end), scores, _NOTHING_SEEN)


def _score_grads(probs, d_probs, row, scale):
  """dS (the gradient of the unscaled q·k) from P, dP and rowsum(dO ∘ O), either layout."""
  return probs * (d_probs - row) * scale


# --- Forward ------------------------------------------------------------------------------


def _forward_kernel(first_ref, last_ref, start_ref, end_ref, q_ref, k_ref, v_ref,
                    out_ref, logsumexp_ref, max_ref, sum_ref, acc_ref, *, scale):
  """One online-softmax step of block pair (i, j); the key blocks j run innermost, in
  order."""
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    max_ref[...] = jnp.full(max_ref.shape, _NOTHING_SEEN, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(_visits(first_ref, last_ref, b, i, j))
  def _accumulate():
    block_k = k_ref.shape[0]
    scores = _masked_scores(q_ref[...], k_ref[...], _as_column(start_ref[...]),
                            _as_column(end_ref[...]), j * block_k, scale)
    before = max_ref[...]
    now = jnp.maximum(before, scores.max(1, keepdims=True))
    correction = jnp.exp(before - now)
    probs = jnp.exp(scores - now)
    sum_ref[...] = correction * sum_ref[...] + probs.sum(1, keepdims=True)
    acc_ref[...] = correction * acc_ref[...] + _dot(probs.astype(v_ref.dtype), v_ref[...])
    max_ref[...] = now

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    out_ref[...] = (acc_ref[...] / sum_ref[...]).astype(out_ref.dtype)
    logsumexp_ref[...] = _as_row(max_ref[...] + jnp.log(sum_ref[...]))


def _forward_call(q, k, v, start, end, bounds, tiling):
  """out [B, heads, L, D] and the log-sum-exp per query [B, heads, 1, L] (f32)."""
  batch, heads, length, dim = q.shape
  specs = _query_major_specs(tiling, dim)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, heads, length // tiling.block_q, length // tiling.block_k),
      in_specs=[specs.range_row, specs.range_row, specs.query_tile, specs.key_tile,
                specs.key_tile],
      out_specs=[specs.query_tile, specs.query_row],
      scratch_shapes=[pltpu.VMEM((tiling.block_q, 1), jnp.float32),
                      pltpu.VMEM((tiling.block_q, 1), jnp.float32),
                      pltpu.VMEM((tiling.block_q, dim), jnp.float32)])
  return pl.pallas_call(
      functools.partial(_forward_kernel, scale=dim ** -0.5),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, 1, length), jnp.float32)],
      compiler_params=_compiler_params(),
      cost_estimate=_cost_estimate(q, tiling, matmuls=2, streamed=(k, v),
                                   streamed_block=tiling.block_k, resident=(q, q)),
      interpret=tiling.interpret,
  )(*bounds, start, end, q, k, v)


# --- Backward: dK, dV ---------------------------------------------------------------------


def _key_value_grads_kernel(first_ref, last_ref, lo_ref, hi_ref, start_ref, end_ref, q_ref,
                            k_ref, v_ref, d_out_ref, logsumexp_ref, row_ref, d_k_ref,
                            d_v_ref, d_k_acc, d_v_acc, *, scale):
  """Block pair (i, j), the query blocks i innermost. Scores are transposed here,
  [block_k, block_q], so that the per-query rows broadcast down them as they lie and
  dK = dSᵀ Q, dV = Pᵀ dO are plain matmuls."""
  del lo_ref, hi_ref                                   # read by the index maps only
  b, j, i = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(i == 0)
  def _start():
    d_k_acc[...] = jnp.zeros(d_k_acc.shape, jnp.float32)
    d_v_acc[...] = jnp.zeros(d_v_acc.shape, jnp.float32)

  @pl.when(_visits(first_ref, last_ref, b, i, j))
  def _accumulate():
    q, d_out = q_ref[...], d_out_ref[...]
    block_k = k_ref.shape[0]
    scores = _dot(k_ref[...], q, _TRANSPOSE_B) * scale
    keys = j * block_k + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 0)
    probs = jnp.where(_visible(keys, start_ref[...], end_ref[...]),
                      jnp.exp(scores - logsumexp_ref[...]), 0.0)
    d_v_acc[...] += _dot(probs.astype(d_out.dtype), d_out)
    d_probs = _dot(v_ref[...], d_out, _TRANSPOSE_B)
    d_scores = _score_grads(probs, d_probs, row_ref[...], scale)
    d_k_acc[...] += _dot(d_scores.astype(q.dtype), q)

  @pl.when(i == pl.num_programs(3) - 1)
  def _finish():
    d_k_ref[...] = d_k_acc[...].astype(d_k_ref.dtype)
    d_v_ref[...] = d_v_acc[...].astype(d_v_ref.dtype)


def _key_value_grads_call(q, k, v, start, end, d_out, logsumexp, row, bounds, tiling):
  batch, heads, length, dim = q.shape
  key_blocks = length // tiling.block_k
  specs = _key_major_specs(tiling, dim)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=4,
      grid=(batch, heads, key_blocks, length // tiling.block_q),
      in_specs=[specs.range_row, specs.range_row, specs.query_tile, specs.key_tile,
                specs.key_tile, specs.query_tile, specs.query_row, specs.query_row],
      out_specs=[specs.key_tile, specs.key_tile],
      scratch_shapes=[pltpu.VMEM((tiling.block_k, dim), jnp.float32),
                      pltpu.VMEM((tiling.block_k, dim), jnp.float32)])
  return pl.pallas_call(
      functools.partial(_key_value_grads_kernel, scale=dim ** -0.5),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_compiler_params(),
      cost_estimate=_cost_estimate(q, tiling, matmuls=4, streamed=(q, d_out),
                                   streamed_block=tiling.block_q, resident=(k, v, k, v)),
      interpret=tiling.interpret,
  )(*bounds, *_query_block_bounds(*bounds, key_blocks), start, end, q, k, v, d_out,
    logsumexp, row)


# --- Backward: dQ -------------------------------------------------------------------------


def _query_grads_kernel(first_ref, last_ref, start_ref, end_ref, q_ref, k_ref, v_ref,
                        d_out_ref, logsumexp_ref, row_ref, d_q_ref, d_q_acc, *, scale):
  """Block pair (i, j), the key blocks j innermost, as in the forward."""
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    d_q_acc[...] = jnp.zeros(d_q_acc.shape, jnp.float32)

  @pl.when(_visits(first_ref, last_ref, b, i, j))
  def _accumulate():
    k, v = k_ref[...], v_ref[...]
    block_k = k.shape[0]
    scores = _masked_scores(q_ref[...], k, _as_column(start_ref[...]),
                            _as_column(end_ref[...]), j * block_k, scale)
    probs = jnp.exp(scores - _as_column(logsumexp_ref[...]))
    d_probs = _dot(d_out_ref[...], v, _TRANSPOSE_B)
    d_scores = _score_grads(probs, d_probs, _as_column(row_ref[...]), scale)
    d_q_acc[...] += _dot(d_scores.astype(k.dtype), k)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    d_q_ref[...] = d_q_acc[...].astype(d_q_ref.dtype)


def _query_grads_call(q, k, v, start, end, d_out, logsumexp, row, bounds, tiling):
  batch, heads, length, dim = q.shape
  specs = _query_major_specs(tiling, dim)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, heads, length // tiling.block_q, length // tiling.block_k),
      in_specs=[specs.range_row, specs.range_row, specs.query_tile, specs.key_tile,
                specs.key_tile, specs.query_tile, specs.query_row, specs.query_row],
      out_specs=specs.query_tile,
      scratch_shapes=[pltpu.VMEM((tiling.block_q, dim), jnp.float32)])
  return pl.pallas_call(
      functools.partial(_query_grads_kernel, scale=dim ** -0.5),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_compiler_params(),
      cost_estimate=_cost_estimate(q, tiling, matmuls=3, streamed=(k, v),
                                   streamed_block=tiling.block_k, resident=(q, d_out, q)),
      interpret=tiling.interpret,
  )(*bounds, start, end, q, k, v, d_out, logsumexp, row)


# --- Compiler hints -----------------------------------------------------------------------


def _compiler_params():
  """Rows, heads and the outer block axis are independent (a megacore chip splits them
  between its cores); the inner block axis accumulates in scratch, so runs in order."""
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _causal_block_pairs(length, block_q, block_k):
  """The block pairs a causal row visits: key blocks starting before the query block
  ends. Which pairs run is known only at run time, and a row of one document (the most
  a row visits, images aside) visits these."""
  ends = np.arange(1, length // block_q + 1) * block_q
  return int(np.minimum(-(-ends // block_k), length // block_k).sum())


def _cost_estimate(q, tiling, matmuls, streamed, streamed_block, resident):
  """For XLA's scheduler and cost analysis, which cannot see into the kernel: `matmuls`
  [block_q, block_k, D] products per visited pair, a [streamed_block, D] tile of each
  `streamed` array read per pair, the `resident` arrays (inputs and outputs) read or
  written once. The per-query f32 vectors are small beside them and left out."""
  batch, heads, length, dim = q.shape
  pairs = batch * heads * _causal_block_pairs(length, tiling.block_q, tiling.block_k)
  streamed_bytes = sum(pairs * streamed_block * dim * t.dtype.itemsize for t in streamed)
  resident_bytes = sum(t.size * t.dtype.itemsize for t in resident)
  return pl.CostEstimate(
      flops=2 * matmuls * pairs * tiling.block_q * tiling.block_k * dim,
      transcendentals=pairs * tiling.block_q * tiling.block_k,
      bytes_accessed=int(streamed_bytes + resident_bytes))
