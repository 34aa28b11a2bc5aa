"""The pieces the flash-attention kernels share (model/flash_attention.py,
model/flash_backward.py): which (query block, key block) pairs run, the BlockSpecs that
read them, the arithmetic of one block pair, and the hints given to the compiler.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


# A row's running max before it has seen a key, and the score of a key it may not see:
# finite, so exp(masked − max) is 0 once a visible key has set the max, never NaN. Before
# that, a block a row sees nothing of adds exp(0) = 1 per key to its sum and output,
# which the correction exp(before − max) = 0 wipes when its first visible key arrives
# (every query sees at least one key).
NOTHING_SEEN = float(jnp.finfo(jnp.float32).min)

# dot_general's dimension numbers for a · bᵀ (both operands' last dims contracted, so no
# transpose is made) and for a · b.
TRANSPOSE_B = (((1,), (1,)), ((), ()))
PLAIN = (((1,), (0,)), ((), ()))


class Tiling(NamedTuple):
  """The static choices of one call (hashable: custom_vjp's non-differentiable arg)."""
  block_q: int
  block_k: int
  interpret: bool


def as_rows(per_query):
  """[B, L] -> [B, 1, L]: a block of it is a [1, block] row, whole tiles of lanes."""
  return per_query[:, None]


# --- Which block pairs run ----------------------------------------------------------------


def key_block_bounds(start, end, tiling):
  """Per row and query block, the first key block and one past the last that any of its
  queries sees: [B, n_q] int32 each."""
  rows = start.shape[0]
  first = start.reshape(rows, -1, tiling.block_q).min(-1) // tiling.block_k
  last = (end.reshape(rows, -1, tiling.block_q).max(-1) - 1) // tiling.block_k + 1
  return first.astype(jnp.int32), last.astype(jnp.int32)


def query_block_bounds(first, last, key_blocks):
  """Per row and key block, the first query block and one past the last that visit it
  (both 0 where none does): [B, n_k] int32 each."""
  query_blocks = first.shape[1]
  j = jnp.arange(key_blocks)
  visits = (first[..., None] <= j) & (j < last[..., None])      # [B, n_q, n_k]
  i = jnp.arange(query_blocks)[:, None]
  hi = jnp.where(visits, i + 1, 0).max(1)
  lo = jnp.minimum(jnp.where(visits, i, query_blocks).min(1), hi)
  return lo.astype(jnp.int32), hi.astype(jnp.int32)


def clamp_to_visited(step, lo, hi):
  """The block a grid step reads: the step's own inside the visited range lo..hi-1, else
  the nearest visited one, so a skipped step fetches nothing new (Pallas copies a block
  only when its index changes)."""
  return jnp.minimum(jnp.maximum(step, lo), jnp.maximum(hi - 1, lo))


def visits(first_ref, last_ref, b, i, j):
  """Whether query block i of row b sees anything of key block j."""
  return (first_ref[b, i] <= j) & (j < last_ref[b, i])


class Specs(NamedTuple):
  """The BlockSpecs of one grid's operands: a [1, block_q] row of the ranges, a
  [block_q, D] or [block_k, D] tile of one head, a [1, block_q] row of one head's
  per-query f32 vectors."""
  range_row: pl.BlockSpec
  query_tile: pl.BlockSpec
  key_tile: pl.BlockSpec
  query_row: pl.BlockSpec


def query_major_specs(tiling, dim):
  """Grid (row b, head h, query block i, key block j), prefetched the key-block bounds
  first, last [B, n_q]: a skipped key block reads the nearest visited one."""
  def key_block(b, i, j, first, last):
    return clamp_to_visited(j, first[b, i], last[b, i])
  block_q, block_k = tiling.block_q, tiling.block_k
  return Specs(
      range_row=pl.BlockSpec((None, 1, block_q), lambda b, h, i, j, *_: (b, 0, i)),
      query_tile=pl.BlockSpec((None, None, block_q, dim), lambda b, h, i, j, *_: (b, h, i, 0)),
      key_tile=pl.BlockSpec((None, None, block_k, dim),
                            lambda b, h, i, j, *bounds: (b, h, key_block(b, i, j, *bounds), 0)),
      query_row=pl.BlockSpec((None, None, 1, block_q), lambda b, h, i, j, *_: (b, h, 0, i)))


def query_major_grid(tiling, shape, in_specs, out_specs, scratch_shapes):
  """The grid (row b, head h, query block i, key block j) over q of `shape`, the key-block
  bounds first, last prefetched (query_major_specs reads them)."""
  batch, heads, length, _ = shape
  return pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, heads, length // tiling.block_q, length // tiling.block_k),
      in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch_shapes)


def key_major_specs(tiling, dim):
  """Grid (row b, head h, key block j, query block i), prefetched first, last [B, n_q]
  (for the kernel) and the query-block bounds lo, hi [B, n_k]: a skipped query block
  reads the nearest visited one."""
  def query_block(b, j, i, first, last, lo, hi):
    return clamp_to_visited(i, lo[b, j], hi[b, j])
  block_q, block_k = tiling.block_q, tiling.block_k
  return Specs(
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


def dot(a, b, dims=PLAIN):
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def visible(keys, start, end):
  return (keys >= start) & (keys < end)


def as_column(row):
  """[1, n] -> [n, 1]: a per-query row against scores whose queries run down the rows."""
  return row.reshape(row.shape[1], 1)


def as_row(column):
  """[n, 1] -> [1, n], the inverse of as_column."""
  return column.reshape(1, column.shape[0])


def masked_scores(q, k, start, end, first_key, scale):
  """Scaled scores [block_q, block_k] of a block pair, NOTHING_SEEN where masked; start,
  end [block_q, 1]."""
  scores = dot(q, k, TRANSPOSE_B) * scale
  keys = first_key + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  return jnp.where(visible(keys, start, end), scores, NOTHING_SEEN)


def score_grads(probs, d_probs, row, scale):
  """dS (the gradient of the unscaled q·k) from P, dP and rowsum(dO ∘ O), either layout."""
  return probs * (d_probs - row) * scale


# --- Compiler hints -----------------------------------------------------------------------


def compiler_params():
  """Rows, heads and the outer block axis are independent (a megacore chip splits them
  between its cores); the inner block axis accumulates in scratch, so runs in order."""
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def causal_block_pairs(length, block_q, block_k):
  """The block pairs a causal row visits: key blocks starting before the query block
  ends. Which pairs run is known only at run time, and a row of one document (the most
  a row visits, images aside) visits these."""
  ends = np.arange(1, length // block_q + 1) * block_q
  return int(np.minimum(-(-ends // block_k), length // block_k).sum())


def cost_estimate(q, tiling, matmuls, streamed, streamed_block, resident):
  """For XLA's scheduler and cost analysis, which cannot see into the kernel: `matmuls`
  [block_q, block_k, D] products per visited pair, a [streamed_block, D] tile of each
  `streamed` array read per pair, the `resident` arrays (inputs and outputs) read or
  written once. The per-query f32 vectors are small beside them and left out."""
  batch, heads, length, dim = q.shape
  pairs = batch * heads * causal_block_pairs(length, tiling.block_q, tiling.block_k)
  streamed_bytes = sum(pairs * streamed_block * dim * t.dtype.itemsize for t in streamed)
  resident_bytes = sum(t.size * t.dtype.itemsize for t in resident)
  return pl.CostEstimate(
      flops=2 * matmuls * pairs * tiling.block_q * tiling.block_k * dim,
      transcendentals=pairs * tiling.block_q * tiling.block_k,
      bytes_accessed=int(streamed_bytes + resident_bytes))
