"""Attention's memory at long sequences: the forward and backward of one attention layer
with dense scores (`xla`: [B, heads, L, L], the mask built from the key ranges inside)
against the chunked kernel over the same key ranges, one row per device.

  .venv/bin/python benchmarks/attention.py --topology=v5p:2x2x1 --length=8192
  .venv/bin/python benchmarks/attention.py --local --length=8192     # a GPU / TPU host

With --topology it compiles for that TPU topology on this machine (libtpu, no TPU) and
reports per-device temporary bytes. With --local it compiles for this machine's devices
and also times both (median of 5 runs, milliseconds). Prints one JSON line. `--smoke`:
tiny shapes on this machine's CPU.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmpretrain import distributed
from mmpretrain.model import attention
from mmpretrain.model.masks import key_ranges
from mmpretrain.train import aot
import smoke


def compile_attention(impl, devices, batch, length, heads, head_dim, chunk):
  """The compiled forward and backward of attention, and its arguments' shapes."""
  mesh = Mesh(np.array(devices), ("data",))
  rows = NamedSharding(mesh, P("data"))
  qkv = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.bfloat16, sharding=rows)
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)
  def loss(q, k, v, segment_ids, block_ids):
    out = attention.attend(q, k, v, key_ranges(segment_ids, block_ids), impl, chunk)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  shapes = (qkv, qkv, qkv, ids, ids)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile(), shapes


def packed_rows(shapes, frame_tokens: int = 256):
  """Random q, k, v and rows of eight documents, each text then one image block."""
  rng = np.random.default_rng(0)
  qkv = [jax.device_put(jnp.asarray(rng.normal(size=s.shape), s.dtype), s.sharding)
         for s in shapes[:3]]
  batch, length = shapes[3].shape
  document = length // 8
  position = np.arange(length) % document
  segment = np.broadcast_to(np.arange(length) // document + 1, (batch, length))
  block = np.broadcast_to(np.where(position >= document - min(frame_tokens, document // 2),
                                   np.arange(length) // document + 1, 0), (batch, length))
  ids = [jax.device_put(jnp.asarray(a, jnp.int32), shapes[3].sharding) for a in (segment, block)]
  return [*qkv, *ids]


def median_ms(compiled, args, repeats: int = 5) -> float:
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--local", action="store_true", help="this machine's devices, timed")
  parser.add_argument("--length", type=int, default=8192)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=128)
  parser.add_argument("--chunk", type=int, default=512)
  smoke.add_flag(parser)
  args = parser.parse_args()
  distributed.skip_tpu_probe_on_a_host_only_libtpu()
  length, heads, head_dim, chunk = args.length, args.heads, args.head_dim, args.chunk
  if args.smoke:
    devices, where, length, heads, head_dim, chunk = jax.devices("cpu"), "cpu", 256, 2, 32, 64
  elif args.local:
    devices, where = jax.devices(), jax.devices()[0].device_kind
  else:
    devices, where = aot.abstract_devices(args.topology)[1], args.topology
  timed = args.smoke or args.local
  figures = {}
  for impl in ("xla", "chunked"):
    compiled, shapes = compile_attention(impl, devices, len(devices), length, heads, head_dim,
                                         chunk)
    figures[f"{impl}_temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
    if timed:
      figures[f"{impl}_ms"] = median_ms(compiled, packed_rows(shapes))
  figures["chunked_over_xla_temp"] = figures["chunked_temp_bytes"] / figures["xla_temp_bytes"]
  print(json.dumps({"devices": where, "length": length, "heads": heads, "head_dim": head_dim,
                    "chunk": chunk, **figures}))


if __name__ == "__main__":
  main()
