"""Mixed-precision matmuls: bf16 operands, f32 sums, gradients checked in float64."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmpretrain.model.layers import (SwiGLU, expert_matmul, mixed_precision_dot_general,
                                     paired_swiglu)

# (x shape, w shape, contracted axes): a Linear, a head projection, an output projection.
CASES = [((6, 16), (16, 24), 1), ((6, 16), (16, 3, 8), 1), ((2, 5, 3, 8), (3, 8, 16), 2)]


def _dims(x_ndim, num_contract):
  return ((tuple(range(x_ndim - num_contract, x_ndim)), tuple(range(num_contract))), ((), ()))


def _as_f64(a):
  return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


@pytest.mark.parametrize("x_shape,w_shape,num_contract", CASES)
def test_bf16_forward_and_gradients_match_float64(x_shape, w_shape, num_contract):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)     # the f32 parameter
  dims = _dims(len(x_shape), num_contract)
  out, vjp = jax.vjp(lambda a, b: mixed_precision_dot_general(a, b, dims), x, w)
  d_out = jnp.asarray(rng.normal(size=out.shape), jnp.bfloat16)
  d_x, d_w = vjp(d_out)
  assert out.dtype == d_x.dtype == jnp.bfloat16 and d_w.dtype == jnp.float32

  contract = int(np.prod(w_shape[:num_contract]))
  x64 = _as_f64(x).reshape(-1, contract)
  w64 = _as_f64(w.astype(jnp.bfloat16)).reshape(contract, -1)   # the operand it multiplies
  g64 = _as_f64(d_out).reshape(x64.shape[0], -1)
  for got, want in [(out, x64 @ w64), (d_x, g64 @ w64.T)]:
    want = want.reshape(got.shape)
    # One bf16 rounding of an f32-accumulated sum: relative error ~2^-8 of the magnitude.
    np.testing.assert_allclose(_as_f64(got), want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
  # The weight gradient is the f32 sum itself, never rounded to bf16 (2^-8 would fail this).
  np.testing.assert_allclose(np.asarray(d_w, np.float64), (x64.T @ g64).reshape(w_shape),
                             rtol=1e-5, atol=1e-5)


def test_float32_output_is_the_unrounded_sum():
  # A read-out (the LM head) asks for f32: bf16 rounding would lose the 2^-10 term.
  x = jnp.asarray([[1.0, 2.0 ** -10]], jnp.bfloat16)
  w = jnp.ones((2, 1), jnp.float32)
  out = mixed_precision_dot_general(x, w, _dims(2, 1), preferred_element_type=jnp.float32)
  assert out.dtype == jnp.float32 and float(out[0, 0]) == 1.0 + 2.0 ** -10


def test_float32_is_plain_dot_general():
  rng = np.random.default_rng(1)
  x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(4, 8), (8, 5)])
  dims = _dims(2, 1)
  np.testing.assert_array_equal(mixed_precision_dot_general(x, w, dims),
                                jax.lax.dot_general(x, w, dims))


def test_unsupported_contraction_is_refused():
  x, w = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((5, 8), jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="dimension_numbers"):
    mixed_precision_dot_general(x, w, (((1,), (1,)), ((), ())))


def test_long_sums_accumulate_in_float32():
  # 4096 ones summed in bf16 would stall at 256 (8 significant bits); f32 sums exactly.
  x, w = jnp.ones((2, 4096), jnp.bfloat16), jnp.ones((4096, 3), jnp.bfloat16)
  out = mixed_precision_dot_general(x, w, _dims(2, 1))
  np.testing.assert_array_equal(np.asarray(out, np.float32), 4096.0)


@pytest.mark.parametrize("tokens", [(5,), (2, 5)])   # [E, C, a] and [E, groups, C, a]
def test_expert_matmul_bf16_matches_float64_per_expert(tokens):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, *tokens, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 8, 6)), jnp.float32)           # [E, a, b]
  out, vjp = jax.vjp(expert_matmul, x, w)
  d_out = jnp.asarray(rng.normal(size=out.shape), jnp.bfloat16)
  d_x, d_w = vjp(d_out)
  assert out.dtype == d_x.dtype == jnp.bfloat16 and d_w.dtype == jnp.float32
  # float64 references on the token axes flattened to one: [E, T, ·]
  x64, w64 = _as_f64(x).reshape(3, -1, 8), _as_f64(w.astype(jnp.bfloat16))
  g64 = _as_f64(d_out).reshape(3, -1, 6)
  for got, want in [(out, x64 @ w64), (d_x, g64 @ w64.transpose(0, 2, 1))]:
    np.testing.assert_allclose(_as_f64(got).reshape(want.shape), want, rtol=1e-2,
                               atol=1e-2 * np.abs(want).max())
  np.testing.assert_allclose(np.asarray(d_w, np.float64), x64.transpose(0, 2, 1) @ g64,
                             rtol=1e-5, atol=1e-5)
  f32 = expert_matmul(x.astype(jnp.float32), w)
  np.testing.assert_allclose(np.asarray(f32, np.float64).reshape(x64.shape[0], -1, 6),
                             x64 @ _as_f64(w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_expert_matmul_on_rows_of_tiles_equals_it_on_flat_rows(dtype):
  """Rows kept as tiles [E, C, 2, 4] contract against w [E, 2, 4, b], and outputs come
  out as tiles from w [E, a, 2, 4]: the same values and gradients as on flat rows."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), dtype)
  w_in = jnp.asarray(rng.normal(size=(3, 8, 6)), jnp.float32)
  w_out = jnp.asarray(rng.normal(size=(3, 6, 8)), jnp.float32)
  def flat(x, w_in, w_out):
    return expert_matmul(expert_matmul(x, w_in), w_out, jnp.float32)
  def tiled(x, w_in, w_out):
    h = expert_matmul(x.reshape(3, 5, 2, 4), w_in.reshape(3, 2, 4, 6), contract=2)
    return expert_matmul(h, w_out.reshape(3, 6, 2, 4), jnp.float32).reshape(3, 5, 8)
  def loss(f):
    return lambda *args: jnp.sum(jnp.sin(f(*args)))
  np.testing.assert_allclose(tiled(x, w_in, w_out), flat(x, w_in, w_out), rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.grad(loss(tiled), argnums=(0, 1, 2))(x, w_in, w_out),
                       jax.grad(loss(flat), argnums=(0, 1, 2))(x, w_in, w_out)):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_paired_swiglu_is_each_tokens_own_ffn(dtype):
  """Values and gradients (input and both FFNs' weights) of the side-by-side form equal
  running both SwiGLUs and selecting per token."""
  cfg = types.SimpleNamespace(d_model=8, mlp_dim=12, dtype=dtype, init_std=0.5, num_layers=2)
  graphdef, state = nnx.split((SwiGLU(cfg, rngs=nnx.Rngs(0)), SwiGLU(cfg, rngs=nnx.Rngs(1))))
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(10, 8)), dtype)
  is_visual = jnp.asarray(rng.random(10) < 0.5)
  d_out = jnp.asarray(rng.normal(size=(10, 8)), jnp.float32)

  def selected(state, x):
    text, visual = nnx.merge(graphdef, state)
    return jnp.where(is_visual[:, None], visual(x), text(x))
  def paired(state, x):
    return paired_swiglu(*nnx.merge(graphdef, state), x, is_visual)
  def value_and_grads(apply):
    loss = lambda state, x: jnp.sum(apply(state, x).astype(jnp.float32) * d_out)
    return apply(state, x), jax.grad(loss, argnums=(0, 1))(state, x)
  tol = {"float32": 1e-5, "bfloat16": 2e-2}[dtype]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32),
                                                       np.asarray(b, np.float32),
                                                       rtol=tol, atol=tol),
               value_and_grads(paired), value_and_grads(selected))
