"""Dropless dispatch: every (token, choice) pair runs. Pairs sorted by expert go through
grouped matmuls (jax.lax.ragged_dot) over the groups.

Under a mesh each device sorts its own tokens, and a ragged all-to-all over the `expert`
rule's axes sends each expert's rows to the device holding it and the results back
(expert parallelism without a capacity); XLA:CPU has no ragged all-to-all, so there a
plain all-to-all of worst-case chunks stands in for it.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mmpretrain.model import layers, row_ops
from mmpretrain.model.moe.contract import EXPERT_HIDDEN, ExpertParams, Routing
from mmpretrain.model.moe.exchange import Exchange


@dataclasses.dataclass(frozen=True)
class Dropless:
  """`buffer_factor` sizes each device's receive buffer in multiples of its own T·k rows
  (the balanced load); 0 sizes it for the worst case, every row to one device, and
  nothing is ever dropped. Rows that find no room keep only their residual and count as
  dropped, as with capacity dispatch."""
  num_experts: int
  buffer_factor: float
  dtype: jnp.dtype

  def local(self, x, routing: Routing, params: ExpertParams, exchange: Exchange):
    """The contract's local (contract.py) for this device's tokens x [T, d]."""
    tokens, k = routing.experts.shape
    flat = routing.experts.reshape(-1)               # (token, choice) pairs, token-major
    order = jnp.argsort(flat, stable=True)           # ... sorted by expert
    by_pair = jnp.argsort(order)
    # Rows per expert from the sorted ids: a bincount is a scatter-add, which the TPU cost
    # model misprices (docs/benchmarks.md, "The paper's 1B step on a v5p-64").
    sizes = jnp.diff(jnp.searchsorted(flat[order], jnp.arange(self.num_experts + 1)))
    local_experts = params.gate.shape[0]
    shards = self.num_experts // local_experts
    buffer_rows = shards * tokens * k
    if self.buffer_factor:
      buffer_rows = min(buffer_rows, math.ceil(self.buffer_factor * tokens * k))
    pairs = row_ops.gather_rows(x.astype(self.dtype), order // k, by_pair.reshape(tokens, k))
    rows, group_sizes, found_room, send_back = _to_expert_rows(
        exchange, pairs, sizes, local_experts, buffer_rows)
    def grouped(a, w, out_dtype):
      return jax.lax.ragged_dot(a, w, group_sizes,
                                preferred_element_type=jnp.float32).astype(out_dtype)
    gate_up = exchange.full_width(params.gate_up(), 1)
    h = checkpoint_name(grouped(rows, gate_up, self.dtype), EXPERT_HIDDEN)
    hidden = params.gate.shape[-1]
    y = grouped(layers.swiglu(h[:, :hidden], h[:, hidden:]),
                exchange.full_width(params.down, 2), jnp.float32)
    y = send_back(exchange.sum_mlp_parts(y).astype(self.dtype))
    by_token = row_ops.permute(y, by_pair, order).reshape(tokens, k, -1).astype(jnp.float32)
    out = jnp.einsum("tkd,tk->td", by_token, routing.combine * routing.token_mask[:, None])
    ran = jnp.sum(found_room & jnp.repeat(routing.token_mask, k)[order])
    return out, exchange.total(ran)


def _to_expert_rows(exchange: Exchange, rows, sizes, local_experts: int, buffer_rows: int):
  """Rows [n, d] sorted by expert with `sizes` [E] rows per expert -> (the rows of this
  device's `local_experts` experts from every device, grouped by expert, in a buffer of
  `buffer_rows`; their group sizes; which of `rows` found room there [n] bool; a function
  that returns results for the buffer to `rows`' order here, zero for the rows that found
  no room)."""
  if not exchange.expert:
    return rows, sizes, jnp.ones(rows.shape[0], bool), lambda y: y
  shards = sizes.shape[0] // local_experts
  me = jax.lax.axis_index(exchange.expert)
  counts = jax.lax.all_gather(sizes.reshape(shards, local_experts), exchange.expert)
  wanted = counts.sum(-1)                            # [source, destination] rows
  # Sources fill a destination's buffer in order; what does not fit is dropped, from each
  # source's last experts first (rows are sorted by expert).
  fit = jnp.clip(buffer_rows - _exclusive_cumsum(wanted, axis=0), 0, wanted)
  fit_by_expert = jnp.clip(fit[..., None] - _exclusive_cumsum(counts, axis=-1), 0, counts)
  sent_from = _exclusive_cumsum(wanted[me])           # my rows for each destination
  received = fit[:, me]
  buffer = jnp.zeros((buffer_rows, rows.shape[1]), rows.dtype)
  arrived = _ragged_all_to_all(exchange, rows, buffer, sent_from, fit[me],
                               _exclusive_cumsum(fit, axis=0)[me], received)
  # Rows arrive by source, then expert: regroup them by expert for the grouped matmuls.
  mine = fit_by_expert[:, me].reshape(-1)            # [source · local expert]
  run = jnp.searchsorted(jnp.cumsum(mine), jnp.arange(buffer_rows), side="right")
  by_expert = jnp.argsort(jnp.where(run < mine.shape[0], run % local_experts,
                                    local_experts), stable=True)
  from_expert = jnp.argsort(by_expert)
  position = jnp.arange(rows.shape[0])
  destination = jnp.minimum(
      jnp.searchsorted(jnp.cumsum(wanted[me]), position, side="right"), shards - 1)
  found_room = position - sent_from[destination] < fit[me][destination]

  def send_back(y):
    return _ragged_all_to_all(
        exchange, row_ops.permute(y, from_expert, by_expert),
        jnp.zeros((rows.shape[0], y.shape[1]), y.dtype),
        _exclusive_cumsum(received), received, _exclusive_cumsum(wanted, axis=1)[:, me],
        fit[me])
  return (row_ops.permute(arrived, by_expert, from_expert), fit_by_expert[:, me].sum(0),
          found_room, send_back)


def _ragged_all_to_all(exchange: Exchange, operand, output, send_from, send_sizes, lands_at,
                       recv_sizes):
  if exchange.platform != "cpu":
    return jax.lax.ragged_all_to_all(operand, output, send_from, send_sizes, lands_at,
                                     recv_sizes, axis_name=exchange.expert)
  return padded_ragged_all_to_all(operand, output, send_from, send_sizes, lands_at,
                                  recv_sizes, exchange.expert)


def padded_ragged_all_to_all(operand, output, send_from, send_sizes, lands_at, recv_sizes,
                             axis_name):
  """jax.lax.ragged_all_to_all's result from a plain all_to_all of worst-case chunks
  (XLA:CPU has no ragged all-to-all): device i sends operand[send_from[j]:][:send_sizes[j]]
  to device j, where it is written at output[lands_at[j]:]."""
  n = operand.shape[0]
  slot = jnp.arange(n)
  take = jnp.minimum(send_from[:, None] + slot, n - 1)                  # [peers, n]
  chunks = jnp.where((slot < send_sizes[:, None])[..., None], operand[take], 0)
  arrived = jax.lax.all_to_all(chunks, axis_name, 0, 0, tiled=True)     # [sources, n, d]
  offsets = jax.lax.all_to_all(lands_at, axis_name, 0, 0, tiled=True)  # where each lands
  where = jnp.where(slot < recv_sizes[:, None], offsets[:, None] + slot, output.shape[0])
  return output.at[where.reshape(-1)].set(arrived.reshape(-1, operand.shape[1]), mode="drop")


def _exclusive_cumsum(x, axis: int = 0):
  return jnp.cumsum(x, axis=axis) - x
