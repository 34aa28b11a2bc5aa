"""Capacity dispatch (GShard-style) into per-group expert buffers of C slots.

Each group of n consecutive tokens (within a row, or whole rows) routes on its own, with
C = capacity_factor·n·k/E slots per expert: an expert takes the (token, choice) pairs that
chose it, first choices before second choices and earlier tokens before later ones, and
drops what overflows; a dropped pair's token keeps only its residual. A group never spans
devices, so which tokens drop never depends on how the batch is sharded. Under a mesh the exchange moves the buffers to their experts' devices and back
with two all-to-alls (exchange.py). Two ways fill the slots, behind the same contract:
`RowGathers` (each slot's row gathered, each result gathered back) and `OneHotSlots` (a
one-hot dispatch tensor per group, multiplied in and out: 2·n·k·capacity_factor·d FLOPs a
token each way, so it suits small groups; docs/tpu.md compares the two on TPU).
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mmpretrain import sharding
from mmpretrain.model import layers, row_ops
from mmpretrain.model.moe.contract import (DISPATCH_INDICES, EXPERT_HIDDEN, ExpertParams,
                                           Routing)
from mmpretrain.model.moe.exchange import Exchange


@dataclasses.dataclass(frozen=True)
class Capacity:
  """Groups of `length` tokens, `slots` (C) per expert and group."""
  num_experts: int
  length: int
  slots: int
  dtype: jnp.dtype

  @classmethod
  def sized(cls, num_experts: int, k: int, length: int, capacity_factor: float, dtype):
    """C = capacity_factor·n·k/E slots, at least k: a group of n = `length` tokens."""
    return cls(num_experts, length, max(k, math.ceil(capacity_factor * length * k
                                                      / num_experts)), dtype)

  def groups(self, tokens: int) -> int:
    """The groups in a device's `tokens`; a group split over devices is an error."""
    if tokens % self.length:
      raise sharding.ShardingError(
          f"a device's {tokens} tokens are not whole capacity groups of {self.length}: "
          "lower config.model.moe.capacity_group_rows")
    return tokens // self.length


class RowGathers(Capacity):
  """Slots filled by row gathers. Indices are flat over this device's groups: XLA:CPU runs
  flat gathers markedly faster than group-batched ones."""

  def local(self, x, routing: Routing, params: ExpertParams, exchange: Exchange):
    """The contract's local (contract.py) for this device's tokens x [T, d]."""
    tokens, k = routing.experts.shape
    groups, d, slots = self.groups(tokens), x.shape[-1], self.slots
    position, claims, queues = _claim_slots_by_sorting(routing.experts, routing.token_mask,
                                                       self.length, self.num_experts)
    kept = routing.token_mask.reshape(groups, self.length, 1) & (position < slots)  # [g, n, k]
    # The buffer slot of each (token, choice) pair [T, k]; `num_slots` if it was dropped ...
    num_slots = self.num_experts * groups * slots
    group = jnp.arange(groups)[:, None, None]
    slot_of = jnp.where(kept, routing.experts.reshape(groups, self.length, k)
                        * (groups * slots) + group * slots + position,
                        num_slots).reshape(tokens, k)
    # ... and the pair in each slot (tokens·k if empty): no scatter, no further sort.
    pair_in = _slot_pairs(queues, claims, slots, k).reshape(-1)
    # Named before anything keeps them for its backward, so the backward reads them saved.
    slot_of, pair_in = checkpoint_name((slot_of, pair_in), DISPATCH_INDICES)
    # Each slot's combine weight scales it inside the expert FFN (empty slots: 0), so the
    # combine is a plain sum that stays in the compute dtype until its f32 accumulator.
    slot_combine = checkpoint_name(
        row_ops.gather_rows(routing.combine.reshape(-1, 1), pair_in, slot_of.reshape(-1, 1)),
        DISPATCH_INDICES)
    # Rows stay tiles from the gather through the expert matmuls back to the combine.
    row = row_ops.row_shape(d)
    buffers = row_ops.gather_rows(row_ops.as_tiles(x.astype(self.dtype)), pair_in // k,
                                  slot_of)                               # empty slots read zeros
    y = _expert_ffn(buffers.reshape(self.num_experts, groups * slots, *row), params,
                    self.dtype, exchange,
                    slot_combine.reshape(self.num_experts, groups * slots), len(row))
    out = row_ops.sum_rows(y.reshape(-1, *row), slot_of, pair_in // k)  # dropped pairs add zeros
    return row_ops.from_tiles(out, d), exchange.total(jnp.sum(kept))


class OneHotSlots(Capacity):
  """Slots filled by matmuls: a one-hot dispatch tensor [g, n, E, C] moves each group's
  tokens into its expert slots and, transposed, brings the results back; the combine
  weights scale each slot inside the expert FFN. Autodiff needs no scatter here either."""

  def local(self, x, routing: Routing, params: ExpertParams, exchange: Exchange):
    """The contract's local (contract.py) for this device's tokens x [T, d]."""
    tokens, k = routing.experts.shape
    groups, d = self.groups(tokens), x.shape[-1]
    chosen, position = _claim_slots(routing.experts, routing.token_mask, self.length,
                                    self.num_experts)
    kept = chosen & (position < self.slots)[..., None]                      # [g, n, k, E]
    # A token picks an expert at most once, so summing over its choices selects that one.
    slot_at = jnp.sum(jnp.where(kept, position[..., None], 0), axis=2)      # [g, n, E]
    dispatch = jnp.any(kept, axis=2)[..., None] & (slot_at[..., None]
                                                   == jnp.arange(self.slots))
    # The buffers stay [E, g, C, d]: merging g and C would copy them whenever XLA lays
    # them out group-major (as the group-batched dispatch matmul writes them).
    buffers = jnp.einsum("gnd,gnec->egcd", x.astype(self.dtype).reshape(groups, self.length, d),
                         dispatch.astype(self.dtype))
    combine_at = jnp.sum(jnp.where(kept, routing.combine.reshape(groups, self.length, k, 1),
                                   0.0), axis=2)                            # [g, n, E]
    slot_combine = jnp.sum(jnp.where(dispatch, combine_at[..., None], 0.0), axis=1)  # [g, E, C]
    y = _expert_ffn(buffers, params, self.dtype, exchange, slot_combine.transpose(1, 0, 2))
    out = jnp.einsum("egcd,gnec->gnd", y, dispatch.astype(self.dtype),
                     preferred_element_type=jnp.float32)
    return out.reshape(tokens, d), exchange.total(jnp.sum(kept))


# model.moe.capacity_impl -> how the slots are filled
FILLS = {"gather": RowGathers, "einsum": OneHotSlots}


def _claim_slots(experts, token_mask, length: int, num_experts: int):
  """Each (token, choice) pair's place in its expert's queue within its group of `length`
  tokens: first choices before second choices, earlier tokens before later ones.
  experts [T, k] -> (chosen [g, n, k, E] bool: the pair's expert, none for padding;
  position [g, n, k] int32)."""
  tokens, k = experts.shape
  groups = tokens // length
  chosen = ((experts.reshape(groups, length, k, 1) == jnp.arange(num_experts))
            & token_mask.reshape(groups, length, 1, 1))
  choice_major = chosen.transpose(0, 2, 1, 3).reshape(groups, k * length, num_experts)
  claimed = jnp.cumsum(choice_major.astype(jnp.int32), axis=1)
  claimed = claimed.reshape(groups, k, length, num_experts).transpose(0, 2, 1, 3)
  return chosen, jnp.sum(jnp.where(chosen, claimed - 1, 0), axis=-1)


def _claim_slots_by_sorting(experts, token_mask, length: int, num_experts: int):
  """_claim_slots' positions without its [g, n, k, E] tensor, which grows with the expert
  count: a stable sort of each group's pairs (choice-major) by expert puts every expert's
  queue in order, and a pair's position is its distance from the start of its expert's
  run. experts [T, k] -> (position [g, n, k] int32, claims [g, E] int32: pairs per
  expert, padding excluded, queues [g, k·n] int32: each group's pairs, by their
  choice-major rank choice·n + token, expert by expert in claim order)."""
  tokens, k = experts.shape
  groups = tokens // length
  ids = jnp.where(token_mask[:, None], experts, num_experts)      # padding sorts last
  ids = ids.reshape(groups, length, k).transpose(0, 2, 1).reshape(groups, k * length)
  rank = jnp.broadcast_to(jnp.arange(k * length, dtype=jnp.int32), ids.shape)
  sorted_ids, pair = jax.lax.sort((ids, rank), dimension=1, is_stable=True, num_keys=1)
  starts_run = jnp.concatenate(
      [jnp.ones((groups, 1), bool), sorted_ids[:, 1:] != sorted_ids[:, :-1]], axis=1)
  run_start = jax.lax.cummax(jnp.where(starts_run, rank, 0), axis=1)
  # Back to pair order by sorting on the pair index: a permutation without a scatter.
  _, position = jax.lax.sort((pair, rank - run_start), dimension=1, num_keys=1)
  position = position.reshape(groups, k, length).transpose(0, 2, 1)
  bounds = jax.vmap(functools.partial(jnp.searchsorted, side="left"), (0, None))(
      sorted_ids, jnp.arange(num_experts + 1))
  return position, jnp.diff(bounds, axis=1).astype(jnp.int32), pair


def _slot_pairs(queues, claims, slots: int, k: int):
  """The pair in each capacity slot, read off the claim queues of _claim_slots_by_sorting:
  slot p of (expert e, group g) holds the p-th pair of e's queue in g. queues [g, k·n],
  claims [g, E] -> [E, g, slots] int32 token-major pair ids (token·k + choice), g·k·n
  where the slot is empty. Each queue is read as one slice of `slots`, not element by
  element."""
  groups, pairs = queues.shape
  length = pairs // k
  token = jnp.arange(groups, dtype=jnp.int32)[:, None] * length + queues % length
  pair_ids = jnp.pad(token * k + queues // length, ((0, 0), (0, slots)))  # every slice fits
  starts = jnp.cumsum(claims, axis=1) - claims                  # each queue's first
  def heads(queue, start):
    return jax.lax.dynamic_slice(queue, (start,), (slots,))
  in_slots = jax.vmap(jax.vmap(heads, (None, 0)))(pair_ids, starts)        # [g, E, slots]
  filled = jnp.arange(slots) < jnp.minimum(claims, slots)[..., None]
  return jnp.where(filled, in_slots, groups * pairs).transpose(1, 0, 2)


def _expert_ffn(buffers, params: ExpertParams, dtype, exchange: Exchange, slot_combine,
                row_dims: int = 1):
  """Buffers [E, rows..., *row] of every expert here (one or more row axes; each row's d
  values as its last `row_dims` axes: [d], or tiles [d/128, 128] as gathered) -> the
  experts' outputs in the same shape, in `dtype`, through this device's experts (an
  exchange there and back under a mesh), each row's output scaled by its combine weight
  in `slot_combine` [E, rows...]."""
  row = buffers.shape[buffers.ndim - row_dims:]
  gate_up = exchange.full_width(params.gate_up(), 1)
  gate_up = gate_up.reshape(gate_up.shape[0], *row, gate_up.shape[-1])
  h = checkpoint_name(layers.expert_matmul(exchange.to_experts(buffers), gate_up,
                                           contract=row_dims), EXPERT_HIDDEN)
  hidden = params.gate.shape[-1]
  act = layers.swiglu(h[..., :hidden], h[..., hidden:])
  # Scaled before the (linear) down projection: the combine weights' gradient is then a
  # sum over the f hidden units rather than the d outputs.
  act = act * exchange.to_experts(slot_combine[..., None]).astype(act.dtype)
  down = exchange.full_width(params.down, 2)
  y = layers.expert_matmul(act, down.reshape(*down.shape[:2], *row), out_dtype=jnp.float32)
  return exchange.from_experts(exchange.sum_mlp_parts(y).astype(dtype))
