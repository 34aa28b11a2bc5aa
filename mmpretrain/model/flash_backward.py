"""The flash-attention kernel's backward (model/flash_attention.py): the probabilities
recomputed from the forward's log-sum-exp, in two Pallas kernels, one over key blocks
(dK, dV) and one over query blocks (dQ), each accumulating its gradient in VMEM.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmpretrain.model.flash_blocks import (TRANSPOSE_B, as_column, compiler_params,
                                           cost_estimate, dot, key_major_specs,
                                           masked_scores, query_block_bounds,
                                           query_major_grid, query_major_specs, score_grads,
                                           visible, visits)


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

  @pl.when(visits(first_ref, last_ref, b, i, j))
  def _accumulate():
    q, d_out = q_ref[...], d_out_ref[...]
    block_k = k_ref.shape[0]
    scores = dot(k_ref[...], q, TRANSPOSE_B) * scale
    keys = j * block_k + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 0)
    probs = jnp.where(visible(keys, start_ref[...], end_ref[...]),
                      jnp.exp(scores - logsumexp_ref[...]), 0.0)
    d_v_acc[...] += dot(probs.astype(d_out.dtype), d_out)
    d_probs = dot(v_ref[...], d_out, TRANSPOSE_B)
    d_scores = score_grads(probs, d_probs, row_ref[...], scale)
    d_k_acc[...] += dot(d_scores.astype(q.dtype), q)

  @pl.when(i == pl.num_programs(3) - 1)
  def _finish():
    d_k_ref[...] = d_k_acc[...].astype(d_k_ref.dtype)
    d_v_ref[...] = d_v_acc[...].astype(d_v_ref.dtype)


def key_value_grads_call(q, k, v, start, end, d_out, logsumexp, row, bounds, tiling):
  batch, heads, length, dim = q.shape
  key_blocks = length // tiling.block_k
  specs = key_major_specs(tiling, dim)
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
      compiler_params=compiler_params(),
      cost_estimate=cost_estimate(q, tiling, matmuls=4, streamed=(q, d_out),
                                   streamed_block=tiling.block_q, resident=(k, v, k, v)),
      interpret=tiling.interpret,
  )(*bounds, *query_block_bounds(*bounds, key_blocks), start, end, q, k, v, d_out,
    logsumexp, row)


# --- Backward: dQ -------------------------------------------------------------------------


def _query_grads_kernel(first_ref, last_ref, start_ref, end_ref, q_ref, k_ref, v_ref,
                        d_out_ref, logsumexp_ref, row_ref, d_q_ref, d_q_acc, *, scale):
  """Block pair (i, j), the key blocks j innermost, as in the forward."""
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    d_q_acc[...] = jnp.zeros(d_q_acc.shape, jnp.float32)

  @pl.when(visits(first_ref, last_ref, b, i, j))
  def _accumulate():
    k, v = k_ref[...], v_ref[...]
    block_k = k.shape[0]
    scores = masked_scores(q_ref[...], k, as_column(start_ref[...]),
                            as_column(end_ref[...]), j * block_k, scale)
    probs = jnp.exp(scores - as_column(logsumexp_ref[...]))
    d_probs = dot(d_out_ref[...], v, TRANSPOSE_B)
    d_scores = score_grads(probs, d_probs, as_column(row_ref[...]), scale)
    d_q_acc[...] += dot(d_scores.astype(k.dtype), k)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    d_q_ref[...] = d_q_acc[...].astype(d_q_ref.dtype)


def query_grads_call(q, k, v, start, end, d_out, logsumexp, row, bounds, tiling):
  dim = q.shape[-1]
  specs = query_major_specs(tiling, dim)
  grid_spec = query_major_grid(
      tiling, q.shape,
      [specs.range_row, specs.range_row, specs.query_tile, specs.key_tile, specs.key_tile,
       specs.query_tile, specs.query_row, specs.query_row],
      specs.query_tile, [pltpu.VMEM((tiling.block_q, dim), jnp.float32)])
  return pl.pallas_call(
      functools.partial(_query_grads_kernel, scale=dim ** -0.5),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=compiler_params(),
      cost_estimate=cost_estimate(q, tiling, matmuls=3, streamed=(k, v),
                                   streamed_block=tiling.block_k, resident=(q, d_out, q)),
      interpret=tiling.interpret,
  )(*bounds, start, end, q, k, v, d_out, logsumexp, row)
