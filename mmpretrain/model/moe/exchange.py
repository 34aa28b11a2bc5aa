"""The expert exchange: the collectives of expert parallelism, and `run`, which calls a
dispatch (contract.py) on one device or on every device of the active mesh."""
import dataclasses

import jax
import jax.numpy as jnp

from mmpretrain import sharding
from mmpretrain.model.moe.contract import Dispatch, ExpertParams, Routing


@dataclasses.dataclass(frozen=True)
class Exchange:
  """The collectives over the mesh axes that split the experts (`expert`), their width
  (`embed`), their hidden units (`mlp`) and the tokens (`batch`); on one device, none of
  them does anything. `platform`: the devices', for the one collective XLA:CPU lacks (the
  ragged all-to-all, dropless.py)."""
  expert: tuple = ()
  embed: tuple = ()
  mlp: tuple = ()
  batch: tuple = ()
  platform: str = "cpu"

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


def run(dispatch: Dispatch, x, routing: Routing, params: ExpertParams):
  """dispatch.local on all tokens x [T, d]: directly without a mesh; under the active
  activation rules, in a shard_map with the tokens split like the batch and the experts
  over the `expert` rule's axes. -> (out [T, d] f32, kept pairs over every device)."""
  active = sharding.active_rules()
  if active is None:
    return dispatch.local(x, routing, params, Exchange())
  mesh, rules = active
  def axes(name):
    return tuple(a for a in sharding.mesh_axes(rules, name) if mesh.shape[a] > 1)
  batch, expert = axes("batch"), axes("expert")
  if not set(expert) <= set(batch):
    raise sharding.ShardingError(
        f"config.mesh.rules: the expert axes {expert} must also split the batch "
        f"(rules.batch = {batch}) so each expert shard holds its own tokens")
  exchange = Exchange(expert, axes("embed"), axes("mlp"), batch,
                      platform=mesh.devices.flat[0].platform)
  def spec(*names):
    return sharding.partition_spec(names, rules, mesh)
  tokens, stacked = spec("batch"), spec("expert", "embed", "mlp")
  return jax.shard_map(
      lambda x, routing, params: dispatch.local(x, routing, params, exchange), mesh=mesh,
      in_specs=(tokens, Routing(tokens, tokens, tokens),
                ExpertParams(stacked, stacked, spec("expert", "mlp", "embed"))),
      out_specs=(tokens, spec()))(x, routing, params)
