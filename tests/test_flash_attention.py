"""The Pallas flash-attention kernel, run in Pallas' interpreter on CPU: values and
gradients against float64 softmax over the brute-force mask of packed rows (documents,
images, padding), block skipping, agreement with the chunked kernel, and, where libtpu is
installed, a compile for a v5p chip at the paper's shape."""
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from mmpretrain.model.chunked_attention import RESIDUALS, KeyRanges, chunked_attention
from mmpretrain.model.flash_attention import flash_attention
from mmpretrain.model.masks import attention_mask, key_ranges
from test_attention import reference_attention

HEADS, DIM = 2, 8


def _packed_rows():
  """Two rows of 44 tokens (not a multiple of 16). Row 0: a document with an image
  across a block boundary, a second with two back-to-back frames, then padding. Row 1:
  one document with an image in the middle and one at the very end."""
  segment = np.array([[1] * 18 + [2] * 20 + [0] * 6, [1] * 44], np.int32)
  block = np.zeros_like(segment)
  block[0, 3:11], block[0, 22:26], block[0, 26:30] = 1, 2, 3
  block[1, 10:20], block[1, 35:44] = 1, 2
  return segment, block


def _inputs(shape, dtype, seed):
  """q, k, v and a cotangent, drawn in f32 and rounded to `dtype`."""
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype) for _ in range(4)]


def _flash_with_grads(q, k, v, d_out, ranges, **blocks):
  """The kernel's output and (dq, dk, dv) for cotangent `d_out`, interpreted."""
  out, vjp = jax.vjp(lambda *a: flash_attention(*a, ranges, interpret=True, **blocks), q, k, v)
  return [out, *vjp(d_out)]


NAMES = ["out", "d_q", "d_k", "d_v"]


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_values_and_gradients_match_float64_on_packed_rows(dtype, tolerance):
  # Query blocks of 8 and key blocks of 16: the rows are padded from 44 to 48 tokens.
  segment, block = _packed_rows()
  q, k, v, d_out = _inputs((*segment.shape, HEADS, DIM), dtype, seed=0)
  got = _flash_with_grads(q, k, v, d_out, key_ranges(segment, block), block_q=8, block_k=16)
  want = reference_attention(q, k, v, np.asarray(attention_mask(segment, block)), d_out)
  for name, g, w in zip(NAMES, got, want):
    assert g.dtype == dtype, name
    # Relative to each tensor's largest entry: bf16 rounds q, k, v and P, dS before the
    # matmuls, an error relative to the operands rather than to each (small) entry.
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=tolerance,
                               atol=tolerance * np.abs(w).max(), err_msg=name)


def test_block_pairs_no_query_sees_are_skipped_in_all_three_kernels():
  # Two documents of 32 tokens, blocks of 16: query blocks 0-2 never see key block 3
  # (another document or a later token). Its values are NaN, which a kernel that visited
  # the pair would spread (0 · NaN) to every query of the block, even masked.
  segment = np.repeat(np.array([[1, 2]], np.int32), 32, axis=1)
  block = np.zeros_like(segment)
  block[0, 4:12] = 1
  q, k, v, d_out = _inputs((1, 64, HEADS, DIM), jnp.float32, seed=1)
  poisoned = v.at[:, 48:].set(jnp.nan)
  out, d_q, d_k, d_v = _flash_with_grads(q, k, poisoned, d_out, key_ranges(segment, block),
                                         block_q=16, block_k=16)
  want = reference_attention(q, k, v, np.asarray(attention_mask(segment, block)), d_out)
  # Outputs and dQ of queries before the poisoned block; dK of the first document's keys,
  # which no query that reads the poison sees; dV reads no values at all.
  for name, g, w in [("out", out[:, :48], want[0][:, :48]), ("d_q", d_q[:, :48], want[1][:, :48]),
                     ("d_k", d_k[:, :32], want[2][:, :32]), ("d_v", d_v, want[3])]:
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-5, atol=1e-6, err_msg=name)


def test_equals_the_chunked_kernel():
  # 80 tokens, blocks of 16: three documents with images, padding at the end.
  segment = np.repeat(np.array([1, 2, 3, 0]), [30, 26, 20, 4])[None].astype(np.int32)
  block = np.zeros_like(segment)
  block[0, 8:20], block[0, 40:48], block[0, 60:76] = 1, 2, 3
  ranges = key_ranges(segment, block)
  q, k, v, d_out = _inputs((1, 80, HEADS, 16), jnp.float32, seed=2)
  got = _flash_with_grads(q, k, v, d_out, ranges, block_q=16, block_k=16)
  out, vjp = jax.vjp(lambda *a: chunked_attention(*a, ranges, 16), q, k, v)
  for name, g, w in zip(NAMES, got, [out, *vjp(d_out)]):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6, err_msg=name)


def test_blocks_longer_than_the_row_shrink_to_it():
  # The default blocks of 512 against 44 tokens: one block pair, the whole row.
  segment, block = _packed_rows()
  q, k, v, d_out = _inputs((*segment.shape, HEADS, DIM), jnp.float32, seed=3)
  got = _flash_with_grads(q, k, v, d_out, key_ranges(segment, block))
  want = reference_attention(q, k, v, np.asarray(attention_mask(segment, block)), d_out)
  for name, g, w in zip(NAMES, got, want):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("keep", [False, True])
def test_remat_keeps_the_residuals_rather_than_running_the_forward_again(keep):
  # The forward is one kernel and the backward two, each interpreted as one loop over its
  # grid. The jaxpr holds the forward's rerun either way (Pallas never drops a call in
  # jaxpr DCE); with its outputs kept by name, XLA drops it from the compiled gradient.
  segment, block = _packed_rows()
  q, k, v, _ = _inputs((*segment.shape, HEADS, DIM), jnp.float32, seed=4)
  policy = jax.checkpoint_policies.save_only_these_names(*((RESIDUALS,) if keep else ()))
  attend = jax.checkpoint(
      lambda *a: flash_attention(*a, key_ranges(segment, block), block_q=8, block_k=16,
                                 interpret=True), policy=policy)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.square(attend(*a))), argnums=(0, 1, 2)))
  assert grads.lower(q, k, v).compile().as_text().count(" while(") == (3 if keep else 4)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="no libtpu: make install-tpu")
def test_forward_and_backward_compile_for_a_v5p_chip_at_the_paper_shape():
  """One chip's share of a step's attention: 8 rows of 4096 tokens, 16 heads of 128, bf16,
  compiled by Mosaic for an abstract v5p device (libtpu, no TPU)."""
  from mmpretrain.train.aot import abstract_devices  # pylint: disable=import-outside-toplevel
  _, devices = abstract_devices("v5p-8")
  where = SingleDeviceSharding(devices[0])
  batch, length, heads, dim = 8, 4096, 16, 128
  qkv = jax.ShapeDtypeStruct((batch, length, heads, dim), jnp.bfloat16, sharding=where)
  per_query = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=where)

  def loss(q, k, v, start, end):
    out = flash_attention(q, k, v, KeyRanges(start, end))
    return jnp.sum(jnp.square(out.astype(jnp.float32)))

  began = time.perf_counter()
  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(qkv, qkv, qkv, per_query,
                                                             per_query)
  compiled = lowered.compile()
  seconds = time.perf_counter() - began
  assert lowered.as_text().count("tpu_custom_call") == 3      # forward, dK/dV, dQ
  cost = compiled.cost_analysis()
  print(f"compiled in {seconds:.1f} s; cost_analysis: {cost}")
  # The kernels' declared FLOPs (9 matmuls over the causal block pairs) dominate.
  causal_pairs = batch * heads * (8 * 9 // 2)
  assert cost["flops"] >= 2 * 9 * causal_pairs * 512 * 512 * dim
