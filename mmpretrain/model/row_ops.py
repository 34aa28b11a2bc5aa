"""Row gathers whose gradients are gathers too: the TPU reads a scatter's rows a tile at a
time, and its cost model prices a scatter-add as negative time.

Rows are the leading axis of an array [N, *row]. TPU tiles an array's last two dims
(16×128 for bf16), so a gather of [N, d] rows reads whole tiles, 16 rows for each row it
wants; rows seen as [N, d/128, 128] (`as_tiles`) are tiles of their own. Rows given as
[N, d] are gathered as tiles and handed back as [.., d], which costs a relayout of every
gathered row; callers that keep the tiles from the gather into the matmuls that read them
(`layers.expert_matmul(..., contract=2)`) skip it, which halves a gather's time on the
TPU cost model (docs/benchmarks.md has the figures).
"""
import functools

import jax
import jax.numpy as jnp

_LANES = 128


def row_shape(d: int) -> tuple:
  """The tiled form of a row of d values: (d/128, 128), or (d,) where 128 does not divide d."""
  return (d // _LANES, _LANES) if d % _LANES == 0 else (d,)


def as_tiles(x):
  """x [..., d] as [..., *row_shape(d)]."""
  return x.reshape(*x.shape[:-1], *row_shape(x.shape[-1]))


def from_tiles(x, d: int):
  """The inverse of as_tiles: x [..., *row_shape(d)] as [..., d]."""
  return x.reshape(*x.shape[:x.ndim - len(row_shape(d))], d)


def take_rows(x, index):
  """x[index] over the first axis of x [N, *row], every index in range. Rows of a 2-D x
  are read as tiles and returned as [*index.shape, d]."""
  if x.ndim == 2:
    return from_tiles(jnp.take(as_tiles(x), index, axis=0, mode="clip"), x.shape[-1])
  return jnp.take(x, index, axis=0, mode="clip")


def _take_or_zeros(x, index):
  """take_rows, reading zeros past the end from a zero row appended to x: a copy of x,
  cheaper than masking every row read when x is smaller than what is read from it."""
  padded = jnp.concatenate([x, jnp.zeros((1, *x.shape[1:]), x.dtype)])
  return take_rows(padded, jnp.minimum(index, x.shape[0]))


def _sum_of_rows(y, readers, dtype=None):
  """Σ_j y[readers[t, j]] for readers [T, r], zeros past the end. The mask is applied in
  the sum, where it costs no pass of its own over the rows read."""
  n = y.shape[0]
  rows = take_rows(y, jnp.minimum(readers, n - 1))
  valid = (readers < n).reshape(*readers.shape, *(1,) * (rows.ndim - readers.ndim))
  return jnp.where(valid, rows, 0).sum(1, dtype=dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gather_rows(x, index, readers, in_range: bool = False):
  """x[index] for x [N, *row] and index [M] (an index past the end reads zeros; with
  `in_range` none is), where `readers` [N, r] lists the result rows that read each row of
  x (past the end: none). The gradient is then a gather too, Σ_j g[readers[i, j]], where
  autodiff would scatter-add: slower on TPU, and costed as negative time by its cost
  model."""
  del readers
  return take_rows(x, index) if in_range else _take_or_zeros(x, index)


def _gather_rows_forward(x, index, readers, in_range):
  return gather_rows(x, index, readers, in_range), readers


def _gather_rows_backward(in_range, readers, g):
  del in_range
  return _sum_of_rows(g, readers), None, None


gather_rows.defvjp(_gather_rows_forward, _gather_rows_backward)


@jax.custom_vjp
def sum_rows(y, readers, index):
  """Σ_j y[readers[t, j]] for y [S, *row] and readers [T, r], summed in f32 (past the
  end: zeros), where `index` [S] is the one t whose readers hold each row of y (past the
  end: none): the transpose of gather_rows, and its gradient is a gather by `index`."""
  del index
  return _sum_of_rows(y, readers, jnp.float32)


def _sum_rows_forward(y, readers, index):
  return sum_rows(y, readers, index), (index, jnp.zeros((0,), y.dtype))


def _sum_rows_backward(residuals, g):
  index, like_y = residuals
  return _take_or_zeros(g.astype(like_y.dtype), index), None, None


sum_rows.defvjp(_sum_rows_forward, _sum_rows_backward)


def permute(x, perm, inverse):
  """x[perm] for a permutation whose inverse is `inverse`."""
  return gather_rows(x, perm, inverse[:, None], True)
