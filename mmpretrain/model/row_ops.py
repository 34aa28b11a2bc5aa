"""Row gathers whose gradients are gathers too: the TPU reads a scatter's rows a tile at a
time, and its cost model prices a scatter-add as negative time."""
import jax
import jax.numpy as jnp


@jax.custom_vjp
def gather_rows(x, index, readers):
  """x[index] for x [N, d] (an index past the end reads zeros), where `readers` [N, r]
  lists the result rows that read each row of x (past the end: none). The gradient is
  then a gather too, Σ_j g[readers[i, j]], where autodiff would scatter-add: slower on
  TPU, and costed as negative time by its cost model."""
  return take_rows(x, index)


# TPU tiles an array's last two dims (e.g. 16×128 for bf16), so a gather of [N, d] rows
# reads whole tiles, 16 rows for each row it wants; rows seen as [N, d/128, 128] are
# tiles of their own (the TPU cost model prices a 2048-wide row gather 2.7× cheaper).
_LANES = 128


def take_rows(x, index):
  """x[index] over the first axis of x [N, d], reading zeros past the end."""
  n, d = x.shape[0], x.shape[-1]
  tiled = x.reshape(n, d // _LANES, _LANES) if d % _LANES == 0 else x
  rows = jnp.take(tiled, index, axis=0, mode="fill", fill_value=0)
  return rows.reshape(*index.shape, d)


def _gather_rows_forward(x, index, readers):
  return gather_rows(x, index, readers), readers


def _gather_rows_backward(readers, g):
  return take_rows(g, readers).sum(1), None, None


gather_rows.defvjp(_gather_rows_forward, _gather_rows_backward)


@jax.custom_vjp
def sum_rows(y, readers, index):
  """Σ_j y[readers[t, j]] for y [S, d] and readers [T, r], summed in f32 (past the end:
  zeros), where `index` [S] is the one t whose readers hold each row of y (past the end:
  none): the transpose of gather_rows, and its gradient is a gather by `index`."""
  return take_rows(y, readers).sum(1, dtype=jnp.float32)


def _sum_rows_forward(y, readers, index):
  return sum_rows(y, readers, index), (index, jnp.zeros((0,), y.dtype))


def _sum_rows_backward(residuals, g):
  index, like_y = residuals
  return take_rows(g.astype(like_y.dtype), index), None, None


sum_rows.defvjp(_sum_rows_forward, _sum_rows_backward)


def permute(x, perm, inverse):
  """x[perm] for a permutation whose inverse is `inverse`."""
  return gather_rows(x, perm, inverse[:, None])
