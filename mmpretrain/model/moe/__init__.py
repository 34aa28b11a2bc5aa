"""Mixture-of-Experts FFN: routers, fine-grained experts, shared experts, dispatches behind
one contract.

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

Modules, one concept each:
  contract  the dispatch contract local(x, routing, params, exchange) -> (out, kept), its
            Routing and ExpertParams, and the remat names of its intermediates
  router    expert choices, combine weights, the sigmoid router's bias, the loss statistics
  layer     MoE and Experts, the sizes granularity gives them, what `auto` resolves to
  exchange  expert parallelism's collectives; runs a dispatch on one device or a mesh
  dropless  grouped matmuls, the ragged all-to-all and its XLA:CPU stand-in
  capacity  per-group expert slots, filled by row gathers or by one-hot matmuls
"""
# What callers outside the package read; a new dispatch imports contract.py itself.
from mmpretrain.model.moe.contract import DISPATCH_INDICES, EXPERT_HIDDEN
from mmpretrain.model.moe.dropless import padded_ragged_all_to_all
from mmpretrain.model.moe.layer import (MoE, expert_count, expert_hidden, experts_per_token,
                                        resolve_dispatch)
from mmpretrain.model.moe.router import RouterBias

