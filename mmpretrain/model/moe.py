"""Mixture-of-Experts FFN: routers, fine-grained experts, shared experts, two dispatches.

Config (`config.model.moe`):
  num_experts, experts_per_token — before granularity; `granularity` G multiplies both and
      divides the expert hidden size (`expert_mlp_dim`, default model.mlp_dim), so active
      FLOPs stay fixed while experts get finer.
  router — "softmax" (top-k of softmax probabilities, `renormalize` optional) or "sigmoid"
      (top-k of sigmoid scores + a load-balancing bias that the train step nudges outside
      the optimizer: aux-loss-free balancing).
  shared_experts — "none", "global" (one always-on expert), or "per_modality" (an always-on
      text expert for text tokens and a vision expert for visual tokens).
  dispatch — "dropless" (tokens sorted by expert, grouped matmuls with jax.lax.ragged_dot;
      across expert shards a ragged all-to-all into buffers of dropless_buffer_factor
      times the balanced load, 0 = room for the worst case),
      "capacity" (GShard-style per-expert buffers of capacity_factor·n·k/E slots for each
      group of n tokens — `capacity_group_rows` whole rows, or `capacity_group_tokens`
      consecutive tokens of a row; batched einsum; overflow is dropped and the token keeps
      only its residual), or "auto" (capacity on every platform: resolve_dispatch says why).
  capacity_impl — how tokens reach their slots and come back: "gather" (row gathers) or
      "einsum" (one-hot dispatch and combine matmuls, 2·n·k·capacity_factor·d FLOPs a
      token each, so for small groups: on TPU, which reads a gathered row a tile at a
      time, groups of 128 tokens beat row gathers; docs/tpu.md has the comparison).
"""
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mmpretrain import sharding
from mmpretrain.batch import TOKEN_KINDS, is_visual
from mmpretrain.model import layers, row_ops


# The routed experts' gate/up outputs, by name for the remat policy
# (model.moe.remat_keep_hidden).
EXPERT_HIDDEN = "moe_expert_hidden"
# The router's expert choices and the row-gather dispatch's slot indices and combine
# weights, which the remat policy always keeps: small, and recomputing them would run the
# top-k and the slot claims' sorts again for the backward (docs/tpu.md, "Nothing sorts
# twice").
DISPATCH_INDICES = "moe_dispatch_indices"


class RouterBias(nnx.Variable):
  """Per-expert selection bias of the sigmoid router; updated by load, not by gradients."""


def resolve_dispatch(dispatch: str) -> str:
  """The dispatch `auto` stands for: capacity on every platform, because each XLA backend
  runs dropless's jax.lax.ragged_dot, or its gradient, as more than a grouped matmul:
  XLA:CPU as a loop (docs/benchmarks.md, "MoE overhead"); XLA:TPU's weight gradient runs
  every group's rows against every expert, so the step is slower and larger (docs/tpu.md,
  "MoE on TPU: which dispatch, which mesh"); XLA:GPU as a dense matmul over every expert,
  far slower and out of memory at a chip's tokens (docs/gpu.md, "Measured on one H200")."""
  return "capacity" if dispatch == "auto" else dispatch


def expert_count(moe) -> int:
  return moe.num_experts * moe.granularity


def experts_per_token(moe) -> int:
  return moe.experts_per_token * moe.granularity


def expert_hidden(moe, mlp_dim: int) -> int:
  hidden = moe.expert_mlp_dim or mlp_dim
  if hidden % moe.granularity:
    raise ValueError(f"model.moe.granularity={moe.granularity} does not divide the expert "
                     f"hidden size {hidden}")
  return hidden // moe.granularity


def _pick(probs, experts):
  """probs [T, E] at the chosen experts [T, k], as a masked sum over E: TPU gathers read
  a whole tile per element, and take_along_axis's gradient would be a scatter-add
  (docs/benchmarks.md, "The paper's MoE step on a v5p-64": router weights)."""
  chosen = experts[..., None] == jnp.arange(probs.shape[-1])               # [T, k, E]
  return jnp.sum(jnp.where(chosen, probs[:, None, :], 0.0), axis=-1)


def _router_logits(x, kernel):
  """x [T, d] @ kernel [d, E] in f32, written as a batched matmul over a unit axis so that
  the dots_no_batch remat policy recomputes it for the backward rather than keep [T, E]
  in f32 for every MoE layer: HBM a large expert count cannot spare, against a matmul of
  d·E a token to recompute (docs/tpu.md, "The routers' logits recomputed")."""
  return jnp.einsum("btd,bde->bte", x[None].astype(jnp.float32),
                    kernel[None].astype(jnp.float32))[0]


class Router(nnx.Module):
  """Token -> (k expert ids, k combine weights) plus the auxiliary statistics."""

  def __init__(self, d_model: int, num_experts: int, k: int, moe, init_std: float, *,
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        layers.dense_init(init_std, ("embed", "expert"))(rngs.params(), (d_model, num_experts)))
    self.num_experts, self.k = num_experts, k
    self.kind, self.renormalize = moe.router, moe.renormalize
    if self.kind == "sigmoid":
      self.bias = RouterBias(jnp.zeros((num_experts,), jnp.float32))

  def __call__(self, x, token_kind):
    """x [T, d], token_kind int [T] -> experts int32 [T, k], weights f32 [T, k], stats."""
    logits = _router_logits(x, self.kernel[...])
    if self.kind == "softmax":
      probs = jax.nn.softmax(logits, axis=-1)
      _, experts = jax.lax.top_k(jax.lax.stop_gradient(probs), self.k)
    else:
      probs = jax.nn.sigmoid(logits)
      _, experts = jax.lax.top_k(jax.lax.stop_gradient(probs) + self.bias[...], self.k)
    experts = checkpoint_name(experts, DISPATCH_INDICES)
    weights = _pick(probs, experts)                  # the sigmoid bias picks, never weighs
    if self.renormalize:
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    valid = (token_kind >= 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    chosen = jnp.sum(jax.nn.one_hot(experts, self.num_experts), axis=1)        # [T, E]
    kind_load = jnp.einsum("tk,te->ke", jax.nn.one_hot(token_kind, len(TOKEN_KINDS)), chosen)
    load = jnp.sum(kind_load, axis=0)
    # Switch load balancing, k-way: E · Σ_e (share of assignments to e) · (mean prob of e).
    share = load / (count * self.k)
    mean_prob = jnp.sum(probs / jnp.sum(probs, -1, keepdims=True) * valid[:, None], 0) / count
    stats = {"load_balance": self.num_experts * jnp.sum(share * mean_prob),
             "router_z": jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * valid) / count,
             "expert_load": load, "kind_load": kind_load}
    return experts, weights, stats


class Experts(nnx.Module):
  """E SwiGLU experts stored stacked: gate/up [E, d, f], down [E, f, d]."""

  def __init__(self, num_experts: int, d_model: int, hidden: int, cfg, *, rngs: nnx.Rngs):
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5
    def weight(shape, std, axes):
      return nnx.Param(layers.dense_init(std, axes)(rngs.params(), shape))
    self.gate = weight((num_experts, d_model, hidden), std, ("expert", "embed", "mlp"))
    self.up = weight((num_experts, d_model, hidden), std, ("expert", "embed", "mlp"))
    self.down = weight((num_experts, hidden, d_model), out_std, ("expert", "mlp", "embed"))
    self.dtype = jnp.dtype(cfg.dtype)

  def weights(self):
    return tuple(w[...].astype(self.dtype) for w in (self.gate, self.up, self.down))

  def dropless(self, x, experts, weights, token_mask, buffer_factor: float = 0.0):
    """Every (token, choice) pair runs: pairs sorted by expert, grouped matmuls
    (jax.lax.ragged_dot) over the groups.

    Under a mesh each device sorts its own tokens, and a ragged all-to-all over the
    `expert` rule's axes sends each expert's rows to the device holding it and the results
    back (expert parallelism without a capacity). `buffer_factor` sizes each device's
    receive buffer in multiples of its own T·k rows (the balanced load); 0 sizes it for the
    worst case, every row to one device, and nothing is ever dropped. Rows that find no
    room keep only their residual and count as dropped, as with capacity dispatch.
    """
    num_experts = self.gate.shape[0]
    def run(exchange, x, experts, weights, token_mask, gate, up, down):
      return _dropless_local(x, experts, weights, token_mask, (gate, up, down), num_experts,
                             buffer_factor, self.dtype, exchange)
    active = sharding.active_rules()
    if active is None:
      out, kept = run(_Exchange(), x, experts, weights, token_mask, *self.weights())
    else:
      out, kept = _sharded(run, active, x, experts, weights, token_mask, *self.weights())
    return out, 1.0 - kept / jnp.maximum(experts.shape[1] * jnp.sum(token_mask), 1)

  def capacity(self, x, experts, weights, token_mask, groups: int, capacity_factor: float,
               impl: str = "gather"):
    """GShard-style dispatch into per-group expert buffers of C slots.

    Each group of n consecutive tokens (within a row, or whole rows) routes on its own, with
    C = capacity_factor·n·k/E slots per expert, so which tokens are dropped never depends
    on how the batch is sharded. Under a mesh the groups are split like the batch and the
    experts over the `expert` rule's axes: a shard_map runs the local dispatch on each
    device's groups and moves the buffers to their experts' devices and back with two
    all-to-alls (the exchange of expert parallelism), gathering `embed`-split weights and
    summing `mlp`-split partial outputs on the way.
    """
    tokens, k = experts.shape
    length, num_experts = tokens // groups, self.gate.shape[0]
    slots = max(k, math.ceil(capacity_factor * length * k / num_experts))
    local = {"gather": _capacity_local, "einsum": _capacity_einsum_local}[impl]
    def run(exchange, x, experts, weights, token_mask, gate, up, down):
      return local(x, experts, weights, token_mask, (gate, up, down), num_experts, length,
                   slots, self.dtype, exchange)
    active = sharding.active_rules()
    if active is None:
      out, kept = run(_Exchange(), x, experts, weights, token_mask, *self.weights())
    else:
      ways = sharding.batch_ways(*active)
      if groups % ways:
        raise sharding.ShardingError(
            f"{groups} capacity groups do not split {ways} ways over the batch axes: "
            "lower config.model.moe.capacity_group_rows")
      out, kept = _sharded(run, active, x, experts, weights, token_mask, *self.weights())
    drop_rate = 1.0 - kept / jnp.maximum(k * jnp.sum(token_mask), 1)
    return out, drop_rate


class _Exchange:
  """The collectives of expert parallelism; on one device, none of them does anything.
  `platform`: the devices', for the one collective XLA:CPU lacks (ragged all-to-all)."""

  def __init__(self, expert=(), embed=(), mlp=(), batch=(), platform: str = "cpu"):
    self.expert, self.embed, self.mlp, self.batch = expert, embed, mlp, batch
    self.platform = platform

  def to_experts(self, buffers):      # [E, rows..., d] -> [E/ep, ep, rows..., d]
    # Received source-major (the all-to-all splits and concatenates the leading axis) and
    # read as [E/ep, ep, rows] by the expert matmuls: received along the expert axis
    # ([E/ep, ep·rows]), XLA copies the buffers into that order and back.
    if not self.expert:
      return buffers
    ep = jax.lax.axis_size(self.expert)
    by_source = jax.lax.all_to_all(buffers.reshape(ep, -1, *buffers.shape[1:]), self.expert,
                                   0, 0, tiled=True)
    return jnp.moveaxis(by_source, 0, 1)

  def from_experts(self, buffers):    # inverse of to_experts
    if not self.expert:
      return buffers
    back = jax.lax.all_to_all(jnp.moveaxis(buffers, 1, 0), self.expert, 0, 0, tiled=True)
    return back.reshape(-1, *back.shape[2:])

  def full_width(self, weight, axis: int):   # gather the `embed` (fsdp) split of a weight
    return jax.lax.all_gather(weight, self.embed, axis=axis, tiled=True) if self.embed else weight

  def sum_mlp_parts(self, y):                # partial sums over an `mlp` (tensor) split
    return jax.lax.psum(y, self.mlp) if self.mlp else y

  def total(self, count):                    # over the devices holding other groups
    return jax.lax.psum(count, self.batch) if self.batch else count

  def to_expert_rows(self, rows, sizes, local_experts: int, buffer_rows: int):
    """Rows [n, d] sorted by expert with `sizes` [E] rows per expert -> (the rows of this
    device's `local_experts` experts from every device, grouped by expert, in a buffer of
    `buffer_rows`; their group sizes; which of `rows` found room there [n] bool; a
    function that returns results for the buffer to `rows`' order here, zero for the rows
    that found no room)."""
    if not self.expert:
      return rows, sizes, jnp.ones(rows.shape[0], bool), lambda y: y
    shards = sizes.shape[0] // local_experts
    me = jax.lax.axis_index(self.expert)
    counts = jax.lax.all_gather(sizes.reshape(shards, local_experts), self.expert)
    wanted = counts.sum(-1)                          # [source, destination] rows
    # Sources fill a destination's buffer in order; what does not fit is dropped, from
    # each source's last experts first (rows are sorted by expert).
    fit = jnp.clip(buffer_rows - _exclusive_cumsum(wanted, axis=0), 0, wanted)
    fit_by_expert = jnp.clip(fit[..., None] - _exclusive_cumsum(counts, axis=-1), 0, counts)
    sent_from = _exclusive_cumsum(wanted[me])        # my rows for each destination
    received = fit[:, me]
    buffer = jnp.zeros((buffer_rows, rows.shape[1]), rows.dtype)
    arrived = self._ragged_all_to_all(rows, buffer, sent_from, fit[me],
                                      _exclusive_cumsum(fit, axis=0)[me], received)
    # Rows arrive by source, then expert: regroup them by expert for the grouped matmuls.
    mine = fit_by_expert[:, me].reshape(-1)          # [source · local expert]
    run = jnp.searchsorted(jnp.cumsum(mine), jnp.arange(buffer_rows), side="right")
    by_expert = jnp.argsort(jnp.where(run < mine.shape[0], run % local_experts,
                                      local_experts), stable=True)
    from_expert = jnp.argsort(by_expert)
    position = jnp.arange(rows.shape[0])
    destination = jnp.minimum(
        jnp.searchsorted(jnp.cumsum(wanted[me]), position, side="right"), shards - 1)
    found_room = position - sent_from[destination] < fit[me][destination]

    def send_back(y):
      return self._ragged_all_to_all(
          row_ops.permute(y, from_expert, by_expert),
          jnp.zeros((rows.shape[0], y.shape[1]), y.dtype),
          _exclusive_cumsum(received), received, _exclusive_cumsum(wanted, axis=1)[:, me],
          fit[me])
    return (row_ops.permute(arrived, by_expert, from_expert), fit_by_expert[:, me].sum(0),
            found_room, send_back)

  def _ragged_all_to_all(self, operand, output, send_from, send_sizes, lands_at, recv_sizes):
    if self.platform != "cpu":
      return jax.lax.ragged_all_to_all(operand, output, send_from, send_sizes, lands_at,
                                       recv_sizes, axis_name=self.expert)
    return padded_ragged_all_to_all(operand, output, send_from, send_sizes, lands_at,
                                    recv_sizes, self.expert)


def _exclusive_cumsum(x, axis: int = 0):
  return jnp.cumsum(x, axis=axis) - x


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


def _dropless_local(x, experts, weights, token_mask, expert_weights, num_experts: int,
                    buffer_factor: float, dtype, exchange: _Exchange):
  """Dropless dispatch of this device's tokens x [T, d] onto expert_weights (gate, up,
  down) of this device's experts (all of them without a mesh). Each device receives
  into a buffer of buffer_factor · T·k rows (0: room for every row of every device).
  Returns (output [T, d] f32, number of real-token assignments run)."""
  tokens, k = experts.shape
  flat = experts.reshape(-1)                         # (token, choice) pairs, token-major
  order = jnp.argsort(flat, stable=True)             # ... sorted by expert
  by_pair = jnp.argsort(order)
  # Rows per expert from the sorted ids: a bincount is a scatter-add, which the TPU cost
  # model misprices (docs/benchmarks.md, "The paper's 1B step on a v5p-64").
  sizes = jnp.diff(jnp.searchsorted(flat[order], jnp.arange(num_experts + 1)))
  gate, up, down = expert_weights
  shards = num_experts // gate.shape[0]
  buffer_rows = shards * tokens * k
  if buffer_factor:
    buffer_rows = min(buffer_rows, math.ceil(buffer_factor * tokens * k))
  pairs = row_ops.gather_rows(x.astype(dtype), order // k, by_pair.reshape(tokens, k))
  rows, group_sizes, found_room, send_back = exchange.to_expert_rows(
      pairs, sizes, gate.shape[0], buffer_rows)
  def grouped(a, w, out_dtype):
    return jax.lax.ragged_dot(a, w, group_sizes,
                              preferred_element_type=jnp.float32).astype(out_dtype)
  gate_up = exchange.full_width(jnp.concatenate([gate, up], axis=-1), 1)
  h = checkpoint_name(grouped(rows, gate_up, dtype), EXPERT_HIDDEN)
  hidden = gate.shape[-1]
  y = grouped(layers.swiglu(h[:, :hidden], h[:, hidden:]), exchange.full_width(down, 2),
              jnp.float32)
  y = send_back(exchange.sum_mlp_parts(y).astype(dtype))
  by_token = row_ops.permute(y, by_pair, order).reshape(tokens, k, -1).astype(jnp.float32)
  out = jnp.einsum("tkd,tk->td", by_token, weights * token_mask[:, None])
  ran = jnp.sum(found_room & jnp.repeat(token_mask, k)[order])
  return out, exchange.total(ran)


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
  starts = _exclusive_cumsum(claims, axis=1)
  def heads(queue, start):
    return jax.lax.dynamic_slice(queue, (start,), (slots,))
  in_slots = jax.vmap(jax.vmap(heads, (None, 0)))(pair_ids, starts)        # [g, E, slots]
  filled = jnp.arange(slots) < jnp.minimum(claims, slots)[..., None]
  return jnp.where(filled, in_slots, groups * pairs).transpose(1, 0, 2)


def _expert_ffn(buffers, expert_weights, dtype, exchange: _Exchange, slot_weights=None,
                row_dims: int = 1):
  """Buffers [E, rows..., *row] of every expert here (one or more row axes; each row's d
  values as its last `row_dims` axes: [d], or tiles [d/128, 128] as gathered) -> the
  experts' outputs in the same shape, in `dtype`, through this device's experts (an
  exchange there and back under a mesh); with `slot_weights` [E, rows...], each row's
  output scaled by its weight."""
  gate, up, down = expert_weights
  row = buffers.shape[buffers.ndim - row_dims:]
  # gate and up as one matmul twice as wide: fine-grained experts are narrow, and XLA:CPU
  # runs [C, d] @ [d, 2f] well ahead of two [C, d] @ [d, f].
  gate_up = exchange.full_width(jnp.concatenate([gate, up], axis=-1), 1)
  gate_up = gate_up.reshape(gate_up.shape[0], *row, gate_up.shape[-1])
  h = checkpoint_name(layers.expert_matmul(exchange.to_experts(buffers), gate_up,
                                           contract=row_dims), EXPERT_HIDDEN)
  hidden = gate.shape[-1]
  act = layers.swiglu(h[..., :hidden], h[..., hidden:])
  if slot_weights is not None:
    # Scaled before the (linear) down projection: the weights' gradient is then a sum
    # over the f hidden units rather than the d outputs.
    act = act * exchange.to_experts(slot_weights[..., None]).astype(act.dtype)
  down = exchange.full_width(down, 2)
  y = layers.expert_matmul(act, down.reshape(*down.shape[:2], *row), out_dtype=jnp.float32)
  return exchange.from_experts(exchange.sum_mlp_parts(y).astype(dtype))


def _capacity_local(x, experts, weights, token_mask, expert_weights, num_experts: int,
                    length: int, slots: int, dtype, exchange: _Exchange):
  """Dispatch by row gathers, expert FFN and combine for the groups of n = `length`
  tokens in x; expert_weights (gate, up, down) hold this device's experts (all of them
  without a mesh).

  Indices are flat over this device's groups: XLA:CPU runs flat gathers markedly faster
  than group-batched ones. Returns (output [T, d] f32, number of kept assignments).
  """
  tokens, k = experts.shape
  groups, d = tokens // length, x.shape[-1]
  position, claims, queues = _claim_slots_by_sorting(experts, token_mask, length,
                                                     num_experts)
  kept = token_mask.reshape(groups, length, 1) & (position < slots)         # [g, n, k]
  # The buffer slot of each (token, choice) pair [T, k]; `num_slots` if it was dropped ...
  num_slots = num_experts * groups * slots
  group = jnp.arange(groups)[:, None, None]
  slot_of = jnp.where(kept, experts.reshape(groups, length, k) * (groups * slots)
                      + group * slots + position, num_slots).reshape(tokens, k)
  # ... and the pair in each slot (tokens·k if empty): no scatter, no further sort.
  pair_in = _slot_pairs(queues, claims, slots, k).reshape(-1)
  # Named before anything keeps them for its backward, so the backward reads them saved.
  slot_of, pair_in = checkpoint_name((slot_of, pair_in), DISPATCH_INDICES)
  # Each slot's combine weight scales it inside the expert FFN (empty slots: 0), so the
  # combine is a plain sum that stays in the compute dtype until its f32 accumulator.
  slot_weights = checkpoint_name(row_ops.gather_rows(weights.reshape(-1, 1), pair_in,
                                                     slot_of.reshape(-1, 1)), DISPATCH_INDICES)
  # Rows stay tiles from the gather through the expert matmuls back to the combine.
  row = row_ops.row_shape(d)
  buffers = row_ops.gather_rows(row_ops.as_tiles(x.astype(dtype)), pair_in // k,
                                slot_of)                                 # empty slots read zeros
  y = _expert_ffn(buffers.reshape(num_experts, groups * slots, *row), expert_weights, dtype,
                  exchange, slot_weights.reshape(num_experts, groups * slots), len(row))
  out = row_ops.sum_rows(y.reshape(-1, *row), slot_of, pair_in // k)   # dropped pairs add zeros
  return row_ops.from_tiles(out, d), exchange.total(jnp.sum(kept))


def _capacity_einsum_local(x, experts, weights, token_mask, expert_weights,
                           num_experts: int, length: int, slots: int, dtype,
                           exchange: _Exchange):
  """_capacity_local's function with the gathers as matmuls: a one-hot dispatch tensor
  [g, n, E, C] moves each group's tokens into its expert slots and, transposed, brings
  the results back; the combine weights scale each slot inside the expert FFN. Autodiff
  needs no scatter here either."""
  tokens, k = experts.shape
  groups, d = tokens // length, x.shape[-1]
  chosen, position = _claim_slots(experts, token_mask, length, num_experts)
  kept = chosen & (position < slots)[..., None]                            # [g, n, k, E]
  # A token picks an expert at most once, so summing over its choices selects that one.
  slot_at = jnp.sum(jnp.where(kept, position[..., None], 0), axis=2)        # [g, n, E]
  dispatch = jnp.any(kept, axis=2)[..., None] & (slot_at[..., None] == jnp.arange(slots))
  # The buffers stay [E, g, C, d]: merging g and C would copy them whenever XLA lays them
  # out group-major (as the group-batched dispatch matmul writes them).
  buffers = jnp.einsum("gnd,gnec->egcd", x.astype(dtype).reshape(groups, length, d),
                       dispatch.astype(dtype))
  weight_at = jnp.sum(jnp.where(kept, weights.reshape(groups, length, k, 1), 0.0), axis=2)
  slot_weights = jnp.sum(jnp.where(dispatch, weight_at[..., None], 0.0), axis=1)  # [g, E, C]
  y = _expert_ffn(buffers, expert_weights, dtype, exchange, slot_weights.transpose(1, 0, 2))
  out = jnp.einsum("egcd,gnec->gnd", y, dispatch.astype(dtype),
                   preferred_element_type=jnp.float32)
  return out.reshape(tokens, d), exchange.total(jnp.sum(kept))


def _sharded(run, active, x, experts, weights, token_mask, gate, up, down):
  """`run` under shard_map: tokens split like the batch, experts over the expert axes."""
  mesh, rules = active
  def axes(name):
    return tuple(a for a in sharding.mesh_axes(rules, name) if mesh.shape[a] > 1)
  batch, expert = axes("batch"), axes("expert")
  if not set(expert) <= set(batch):
    raise sharding.ShardingError(
        f"config.mesh.rules: the expert axes {expert} must also split the batch "
        f"(rules.batch = {batch}) so each expert shard holds its own tokens")
  exchange = _Exchange(expert, axes("embed"), axes("mlp"), batch,
                       platform=mesh.devices.flat[0].platform)
  def spec(*names):
    return sharding.partition_spec(names, rules, mesh)
  token_spec = spec("batch")
  return jax.shard_map(
      functools.partial(run, exchange), mesh=mesh,
      in_specs=(token_spec, token_spec, token_spec, token_spec,
                spec("expert", "embed", "mlp"), spec("expert", "embed", "mlp"),
                spec("expert", "mlp", "embed")),
      out_specs=(token_spec, spec()))(x, experts, weights, token_mask, gate, up, down)


class MoE(nnx.Module):
  """Routed experts plus optional shared experts; returns (output, routing stats)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    moe = cfg.moe
    num_experts, k = expert_count(moe), experts_per_token(moe)
    hidden = expert_hidden(moe, cfg.mlp_dim)
    self.router = Router(cfg.d_model, num_experts, k, moe, cfg.init_std, rngs=rngs)
    self.experts = layers.mark_used_by(
        Experts(num_experts, cfg.d_model, hidden, cfg, rngs=rngs), layers.ROUTED)
    shared_hidden = moe.shared_mlp_dim or hidden
    has_shared = moe.shared_experts in ("global", "per_modality")
    self.shared = layers.SwiGLU(cfg, rngs=rngs, mlp_dim=shared_hidden) if has_shared else None
    per_modality = moe.shared_experts == "per_modality"
    self.shared_visual = (layers.mark_used_by(
        layers.SwiGLU(cfg, rngs=rngs, mlp_dim=shared_hidden), layers.VISUAL)
                          if per_modality else None)
    if per_modality:
      layers.mark_used_by(self.shared, layers.TEXT)
    self.dispatch, self.capacity_factor = moe.dispatch, moe.capacity_factor
    self.group_rows, self.group_tokens = moe.capacity_group_rows, moe.capacity_group_tokens
    self.capacity_impl = moe.capacity_impl
    self.buffer_factor = moe.dropless_buffer_factor
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x, token_kind, rows: int):
    """x [T, d] (T = rows · length, row-major); token_kind int [T] (TOKEN_KINDS index,
    -1 = padding)."""
    token_mask = token_kind >= 0
    experts, weights, stats = self.router(x, token_kind)
    dispatch = resolve_dispatch(self.dispatch)
    if dispatch == "dropless":
      out, drop_rate = self.experts.dropless(x, experts, weights, token_mask,
                                             self.buffer_factor)
    else:
      out, drop_rate = self.experts.capacity(x, experts, weights, token_mask,
                                             self.capacity_groups(x.shape[0], rows),
                                             self.capacity_factor, self.capacity_impl)
    if self.shared_visual is not None:
      out = out + layers.paired_swiglu(self.shared, self.shared_visual, x,
                                       is_visual(token_kind))
    elif self.shared is not None:
      out = out + self.shared(x)
    stats["drop_rate"] = drop_rate
    return out.astype(self.dtype), stats

  def capacity_groups(self, tokens: int, rows: int) -> int:
    """How many capacity groups `rows` rows of `tokens` tokens in all make: groups of
    `capacity_group_tokens` consecutive tokens of a row, else of `capacity_group_rows`
    whole rows. A row that `capacity_group_tokens` does not divide (a sampler's prompt or
    block; training rows are checked by the config) is grouped by the largest divisor of
    its length below it."""
    length = tokens // rows
    if self.group_tokens:
      group = max(n for n in range(1, min(self.group_tokens, length) + 1) if length % n == 0)
      return tokens // group
    if rows % self.group_rows:
      raise ValueError(f"model.moe.capacity_group_rows={self.group_rows} does not divide "
                       f"the {rows} rows of a (micro)batch")
    return rows // self.group_rows
