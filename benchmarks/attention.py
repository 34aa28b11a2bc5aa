"""Attention's memory at long sequences: the forward and backward of one attention layer
compiled for a TPU topology (libtpu, no TPU needed), with the dense mask (`xla`: an
[B, 1, L, L] mask and [B, heads, L, L] scores) against the chunked kernel over key ranges.

  .venv/bin/python benchmarks/attention.py --topology=v5p:2x2x1 --length=8192

Prints one JSON line: per-device temporary bytes of each and their ratio. `--smoke`
compiles tiny shapes for this machine's CPU instead.
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmpretrain import distributed
from mmpretrain.model import attention
from mmpretrain.model.masks import attention_mask, key_ranges
from mmpretrain.train import aot
import smoke


def compile_attention(impl, devices, batch, length, heads, head_dim, chunk):
  """Temporary bytes per device of attention's forward and backward."""
  mesh = Mesh(np.array(devices), ("data",))
  rows = NamedSharding(mesh, P("data"))
  qkv = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.bfloat16, sharding=rows)
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)
  build = key_ranges if impl == "chunked" else attention_mask

  def loss(q, k, v, segment_ids, block_ids):
    out = attention.attend(q, k, v, build(segment_ids, block_ids), impl, chunk)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
      qkv, qkv, qkv, ids, ids).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--length", type=int, default=8192)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=128)
  parser.add_argument("--chunk", type=int, default=512)
  smoke.add_flag(parser)
  args = parser.parse_args()
  distributed.skip_tpu_probe_on_a_host_only_libtpu()
  if args.smoke:
    devices, length, heads, head_dim, chunk = jax.devices("cpu"), 256, 2, 32, 64
  else:
    _, devices = aot.abstract_devices(args.topology)
    length, heads, head_dim, chunk = args.length, args.heads, args.head_dim, args.chunk
  batch = len(devices)          # one row per device
  figures = {}
  for impl in ("xla", "chunked"):
    figures[f"{impl}_temp_bytes"] = compile_attention(impl, devices, batch, length, heads,
                                                      head_dim, chunk)
  figures["chunked_over_xla_temp"] = figures["chunked_temp_bytes"] / figures["xla_temp_bytes"]
  print(json.dumps({"topology": "cpu" if args.smoke else args.topology, "length": length,
                    "heads": heads, "head_dim": head_dim, "chunk": chunk, **figures}))


if __name__ == "__main__":
  main()
