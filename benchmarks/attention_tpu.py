"""One layer's chunked attention in a paper run, forward + backward as the layer runs it
(its output read downstream, the backward under the config's remat policy), priced by the
TPU cost model on this machine (libtpu, no TPU), against the dense attention of the same
row and against its own matmuls at the chip's peak.

  python benchmarks/attention_tpu.py [--config=configs/paper/world_model_1b.py]
      [--topology=v5p-64] [--chunk=1024]

Prints one JSON line: `kernel_ms` (per layer and chip, the estimate the compile report
adds: aot.chunked_attention_kernel_cost), `pairs` (the (query chunk, key chunk) blocks
of the typical row) and `block_ms` (one block), `dense_ms` (`xla`: the [B, heads, L, L]
scores of the whole row), `matmul_ms` (the kernel's matmuls at peak: two score matmuls
in the forward's two passes, one to mix values, and in the backward the scores again,
dP, dQ, dK and dV; more with remat running the forward again) and the ratios.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from mmpretrain.config import load_config  # pylint: disable=wrong-import-position
from mmpretrain.hardware import CHIPS  # pylint: disable=wrong-import-position
from mmpretrain.tokenizers.visual import row_spec  # pylint: disable=wrong-import-position
from mmpretrain.train import aot  # pylint: disable=wrong-import-position
import smoke  # pylint: disable=wrong-import-position,wrong-import-order

# c×c score blocks' matmuls of 2·c²·head_dim FLOPs each, per block: the forward's max
# pass, its probabilities pass and value mix (3), the backward's scores, dP, dQ, dK, dV (5).
MATMULS_PER_BLOCK = 3 + 5
# The Pallas kernel's per pair: QK, PV; the dK/dV kernel's scores, dP, dK, dV; the dQ
# kernel's scores, dP, dQ.
PALLAS_MATMULS_PER_BLOCK = 2 + 4 + 3


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs/paper/world_model_1b.py"))
  parser.add_argument("--topology", default="v5p-64", help="the TPU slice (libtpu)")
  parser.add_argument("--chunk", type=int, default=0, help="model.attention_chunk (0: the "
                      "config's)")
  smoke.add_flag(parser)
  args = parser.parse_args()
  topology = args.topology
  if args.smoke:                 # the world model's video documents outgrow tiny rows
    args.config = os.path.join(ROOT, "configs/paper/dense_1b.py")
  config = aot.for_platform(load_config(args.config), "tpu")
  if args.smoke:
    config, topology = smoke.tiny(config), "v5p-8"
    # Rows long enough for an image of the representation's 256 tokens.
    config.data.batch_size, config.data.seq_len, config.model.attention_chunk = 8, 1024, 256
    config.mesh.fsdp = 4
  if args.chunk:
    config.model.attention_chunk = args.chunk
  generation, devices = aot.abstract_devices(topology)
  kernel = aot.chunked_attention_kernel_cost(config, devices)
  spec, m = row_spec(config), config.model
  dense = aot.attention_cost(config, devices, "xla", spec.seq_len)
  chunk = min(m.attention_chunk, spec.seq_len)
  rows, _, heads, head_dim = aot.attention_shard_shape(config, devices, chunk, m.num_heads)
  flops = MATMULS_PER_BLOCK * 2 * chunk ** 2 * head_dim * heads * rows * kernel["pairs"]
  out = {"config": os.path.relpath(args.config, ROOT), "topology": topology, "chunk": chunk,
         "pairs": kernel["pairs"], "block_ms": 1e3 * kernel["block_seconds"],
         "kernel_ms": 1e3 * kernel["optimal_seconds"], "dense_ms": 1e3 * dense["optimal_seconds"],
         "matmul_ms": 1e3 * flops / CHIPS[generation].peak_bf16_flops}
  out["kernel_vs_dense"] = out["kernel_ms"] / out["dense_ms"]
  out["kernel_vs_matmul"] = out["kernel_ms"] / out["matmul_ms"]
  start = time.perf_counter()
  pallas = aot.lower_attention(config, devices, "pallas", spec.seq_len, chunk).compile()
  out["pallas_compile_s"] = time.perf_counter() - start
  out["pallas_temp_bytes"] = pallas.memory_analysis().temp_size_in_bytes
  out["pallas_matmul_ms"] = out["matmul_ms"] * PALLAS_MATMULS_PER_BLOCK / MATMULS_PER_BLOCK
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
  main()
