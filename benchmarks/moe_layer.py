"""One FFN layer, forward + backward, dense SwiGLU vs the MoE layers of the overhead benchmark.

  python benchmarks/moe_layer.py [--repeats=12]

Prints one JSON line: milliseconds per fwd + bwd (gradients for the inputs and every
parameter) of configs/bench/dense_ref.py's SwiGLU, of moe_ref.py's 8 × 768 top-2 layer and
of its 32 × 192 top-8 variant, on the benchmark's 8 × 512 tokens, and the ratios to dense.
The three are called in turn, so the VM's slow spells fall on all of them alike.
Where benchmarks/moe_overhead.py says how much a whole train step pays for MoE, this says
which layer pays it, in seconds rather than minutes.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from mmpretrain.hostalloc import relaunch_with_jemalloc  # pylint: disable=wrong-import-position
from mmpretrain.model import layers, moe  # pylint: disable=wrong-import-position
from moe_overhead import CONFIGS, bench_config  # pylint: disable=wrong-import-position
import smoke  # pylint: disable=wrong-import-position,wrong-import-order


def layer_step(name: str, tiny: bool):
  """A jitted fwd + bwd of one FFN layer of config `name`, compiled and warmed up."""
  config = bench_config(name, tiny)
  model = config.model
  rows, tokens = config.data.batch_size, config.data.batch_size * config.data.seq_len
  layer = (moe.MoE(model, rngs=nnx.Rngs(0)) if model.moe.num_experts
           else layers.SwiGLU(model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(layer)
  x = jax.random.normal(jax.random.key(0), (tokens, model.d_model), jnp.dtype(model.dtype))
  text = jnp.zeros((tokens,), jnp.int32)

  def loss(state, x):
    module = nnx.merge(graphdef, state)
    out = module(x, text, rows)[0] if isinstance(module, moe.MoE) else module(x)
    return jnp.sum(jnp.square(out.astype(jnp.float32)))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  def step():
    jax.block_until_ready(grad(state, x))
  for _ in range(2):                  # compile, then one warm-up call
    step()
  return step


def median_ms(repeats: int, tiny: bool) -> dict:
  """Calls the layers in turn, `repeats` times: a slow spell of the VM hits all of them."""
  steps = {name: layer_step(name, tiny) for name in CONFIGS}
  times = {name: [] for name in CONFIGS}
  for _ in range(repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=12, help="timed calls of each (median)")
  smoke.add_flag(parser)
  args = parser.parse_args()
  ms = median_ms(1 if args.smoke else args.repeats, args.smoke)
  out = {"devices": str(jax.devices()[0].device_kind)}
  for name, value in ms.items():
    out[f"{name}_ms"] = round(value, 1)
    if name != "dense":
      out[f"{name}_vs_dense"] = round(value / ms["dense"], 3)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
