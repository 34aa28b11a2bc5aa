"""The one contract every MoE dispatch keeps, and the names its intermediates go by.

A dispatch is a small frozen dataclass of its static sizes with one method,

  local(x, routing, params, exchange) -> (out, kept)

on one device's share of the tokens: x [T, d], their `Routing`, the `ExpertParams` of the
experts that device holds (all of them without a mesh) and the `exchange.Exchange` that
moves rows to the experts' devices and back (doing nothing without a mesh). It returns
out [T, d] f32, each token's sum over its kept choices of combine weight · expert(x), and
kept, the (token, choice) pairs of real tokens that ran, summed over every device.
`exchange.run` calls it on one device or under a shard_map, so a new dispatch is a new
module with such a class, and the layer (layer.py) picks it by config.
"""
import typing

import jax
import jax.numpy as jnp

# The routed experts' gate/up outputs, by name for the remat policy
# (model.moe.remat_keep_hidden).
EXPERT_HIDDEN = "moe_expert_hidden"
# The router's expert choices and the row-gather dispatch's slot indices and combine
# weights, which the remat policy always keeps: small, and recomputing them would run the
# top-k and the slot claims' sorts again for the backward (docs/tpu.md, "Nothing sorts
# twice").
DISPATCH_INDICES = "moe_dispatch_indices"


class Routing(typing.NamedTuple):
  """The router's decision for T tokens; a pytree, split over devices like the tokens."""
  experts: jax.Array      # int32 [T, k]: each token's chosen experts
  combine: jax.Array      # f32 [T, k]: the weight of each choice in the token's output
  token_mask: jax.Array   # bool [T]: real tokens; padding runs no expert


class ExpertParams(typing.NamedTuple):
  """E SwiGLU experts in the compute dtype, stacked: gate/up [E, d, f], down [E, f, d];
  a pytree, so that under a mesh each device receives its own shards."""
  gate: jax.Array
  up: jax.Array
  down: jax.Array

  def gate_up(self):
    """gate and up side by side [E, d, 2f], for one matmul twice as wide: fine-grained
    experts are narrow, and XLA:CPU runs [C, d] @ [d, 2f] well ahead of two
    [C, d] @ [d, f]."""
    return jnp.concatenate([self.gate, self.up], axis=-1)


class Dispatch(typing.Protocol):
  """What exchange.run calls: see the module docstring."""

  def local(self, x, routing: Routing, params: ExpertParams,
            exchange) -> tuple[jax.Array, jax.Array]:
    ...
