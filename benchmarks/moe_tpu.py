"""One MoE FFN of configs/paper/moe_1b.py, forward + backward, compiled for a TPU slice on
this machine (libtpu, no TPU): the TPU cost model's milliseconds per chip for each
dispatch and mesh, against the dense SwiGLU it stands in for.

  python benchmarks/moe_tpu.py [--topology=v5p-64] [--group_tokens=128]

Prints one JSON line: `capacity_einsum_ms` (the config's layout: no expert axis, every
chip runs all experts on its own tokens with weights gathered like the dense layers',
slots filled by one-hot matmuls in groups of `--group_tokens` tokens), `capacity_ms`
(the same with row gathers over groups of whole rows), `capacity_expert_axis_ms` and
`dropless_expert_axis_ms` (row gathers, experts over an expert axis of 8, tokens
exchanged by all-to-all; dropless receives into buffers of twice the balanced load),
`dense_ms` (configs/paper/dense_1b.py's SwiGLU on the same tokens), `routed_matmul_ms`
(the routed experts' model FLOPs at the chip's peak: what a dispatch that cost nothing
would take) and the ratios to dense. Each is one layer with no remat; a train step adds
the forward's recompute (docs/tpu.md).
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding  # pylint: disable=wrong-import-position

from mmpretrain import sharding  # pylint: disable=wrong-import-position
from mmpretrain.config import load_config  # pylint: disable=wrong-import-position
from mmpretrain.hardware import CHIPS  # pylint: disable=wrong-import-position
from mmpretrain.model import layers, moe  # pylint: disable=wrong-import-position
from mmpretrain.train import aot  # pylint: disable=wrong-import-position
import smoke  # pylint: disable=wrong-import-position,wrong-import-order

# name: (model.moe overrides, expert axis); fsdp takes the rest of the slice's chips
ROW_GATHERS = {"capacity_impl": "gather", "capacity_group_tokens": 0}
VARIANTS = {
    "capacity_einsum": ({"dispatch": "capacity", "capacity_impl": "einsum"}, 1),
    "capacity": ({"dispatch": "capacity", **ROW_GATHERS}, 1),
    "capacity_expert_axis": ({"dispatch": "capacity", **ROW_GATHERS}, 8),
    "dropless_expert_axis": ({"dispatch": "dropless", "dropless_buffer_factor": 2.0}, 8)}


def layer_cost(config, devices, dense: bool) -> float:
  """optimal_seconds of one FFN's forward + backward on `config`'s mesh over `devices`."""
  mesh = sharding.make_mesh(config.mesh, devices)
  rules, m = config.mesh.rules, config.model
  make = ((lambda: layers.SwiGLU(m, rngs=nnx.Rngs(0))) if dense
          else (lambda: moe.MoE(m, rngs=nnx.Rngs(0))))
  graphdef, state = nnx.split(nnx.eval_shape(make))
  state = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                       state, sharding.state_shardings(state, mesh, rules))
  rows = config.data.batch_size
  tokens = rows * config.data.seq_len
  def split(*names):
    return NamedSharding(mesh, sharding.partition_spec(names, rules, mesh))
  x = jax.ShapeDtypeStruct((tokens, m.d_model), jnp.dtype(m.dtype), sharding=split("batch", None))
  kinds = jax.ShapeDtypeStruct((tokens,), jnp.int32, sharding=split("batch"))

  def loss(state, x, kinds):
    with sharding.activation_rules(mesh, rules):
      module = nnx.merge(graphdef, state)
      out = module(x) if dense else module(x, kinds, rows)[0]
    return jnp.sum(out.astype(jnp.float32))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x, kinds).compile(
      compiler_options=aot.cost_options(devices))
  return aot._cost(compiled)["optimal_seconds"]   # pylint: disable=protected-access


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5p-64", help="the TPU slice (libtpu)")
  parser.add_argument("--group_tokens", type=int, default=128,
                      help="capacity group of the one-hot (einsum) layout, in tokens")
  smoke.add_flag(parser)
  args = parser.parse_args()
  config = aot.for_platform(load_config(os.path.join(ROOT, "configs/paper/moe_1b.py")), "tpu")
  topology = args.topology
  if args.smoke:
    config, topology = smoke.tiny(config), "v5p-8"
    config.data.batch_size = 8
  generation, devices = aot.abstract_devices(topology)
  chips = len(devices)
  out = {"topology": topology}
  for name, (overrides, expert_ways) in VARIANTS.items():
    c = config.copy_and_resolve_references()
    expert_ways = min(expert_ways, chips)
    c.model.moe.update({"capacity_group_tokens": args.group_tokens, **overrides})
    c.mesh.fsdp, c.mesh.expert = chips // expert_ways, expert_ways
    out[f"{name}_ms"] = 1e3 * layer_cost(c, devices, dense=False)
  dense = config.copy_and_resolve_references()
  dense.model.moe.num_experts = 0
  dense.mesh.fsdp, dense.mesh.expert = chips, 1
  out["dense_ms"] = 1e3 * layer_cost(dense, devices, dense=True)
  m = config.model
  routed_flops = (6 * config.data.batch_size * config.data.seq_len / chips * m.d_model * 3
                  * moe.expert_hidden(m.moe, m.mlp_dim) * moe.experts_per_token(m.moe))
  out["routed_matmul_ms"] = 1e3 * routed_flops / CHIPS[generation].peak_bf16_flops
  for name in VARIANTS:
    out[f"{name}_vs_dense"] = out[f"{name}_ms"] / out["dense_ms"]
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
  main()
