"""Train-step throughput and MFU on this machine, f32 vs bf16, in one process.

  python benchmarks/train_step.py --config=configs/bench/dense_ref.py [--steps=5 --warmup=2]

Prints one JSON line: tokens_per_s, model_flops_per_s, matmul_peak_flops_per_s (a large
jitted f32 matmul measured here), mfu = their ratio, and the same for the bf16 switch
(bf16 compute, f32 params) with bf16_speedup = bf16 tokens/s ÷ f32 tokens/s; on TPUs and
GPUs also bf16_mfu_vs_device_peak (the vendor's dense bf16 figure). `--bf16_only` skips
the f32 run (accelerators, large configs).
Model FLOPs = 6·N·tokens (N: matmul parameters incl. LM head, not the input embedding)
+ 12·layers·heads·head_dim·seq_len per token for attention (the full L×L that XLA computes).
"""
import argparse
import copy
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpretrain.config import load_config, validate  # pylint: disable=wrong-import-position
from mmpretrain.hardware import peak_bf16_flops  # pylint: disable=wrong-import-position
from mmpretrain.hostalloc import relaunch_with_jemalloc  # pylint: disable=wrong-import-position
from mmpretrain.data.synthetic import interleaved_batch  # pylint: disable=wrong-import-position
from mmpretrain.scaling.flops import train_flops_per_token  # pylint: disable=wrong-import-position
from mmpretrain.run import Run  # pylint: disable=wrong-import-position
from mmpretrain.train.step import Trainer  # pylint: disable=wrong-import-position
import smoke  # pylint: disable=wrong-import-position,wrong-import-order


def matmul_peak(dtype, n=2048, repeats=5) -> float:
  """FLOP/s of a large jitted n×n @ n×n matmul (bf16 operands accumulate in f32)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def measure(config, steps: int, warmup: int) -> dict:
  trainer = Trainer(Run(config), np.ones(config.model.vocab_size, np.float32))
  bench = config.bench
  batch = interleaved_batch(trainer.run.spec, config.data.batch_size, bench["text_tokens_per_row"],
                            bench["images_per_row"], config.model.vocab_size)
  batch = jax.device_put(batch)
  state = trainer.init_state(0)
  for _ in range(1 + warmup):      # compile, then let the allocator reach its high-water mark
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  tokens = config.data.batch_size * config.data.seq_len
  return {"step_s": step_s, "tokens_per_s": tokens / step_s, "metrics": jax.device_get(metrics),
          "model_flops_per_s": train_flops_per_token(config) * tokens / step_s}


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--bf16_only", action="store_true", help="skip the float32 run")
  smoke.add_flag(parser)
  args = parser.parse_args()
  config = validate(load_config(args.config))
  # the reference matmul must be large enough that launching it is noise: 2·8192³ FLOPs
  # take ~1 ms on a current GPU
  peak_n = 2048 if jax.default_backend() == "cpu" else 8192
  if args.smoke:
    config, args.steps, args.warmup, peak_n = smoke.tiny(config), 1, 0, 128
  f32 = None if args.bf16_only else measure(config, args.steps, args.warmup)
  peak_f32 = None if args.bf16_only else matmul_peak(jnp.float32, peak_n)
  bf16_config = copy.deepcopy(config)
  bf16_config.model.dtype = "bfloat16"
  bf16 = measure(bf16_config, args.steps, args.warmup)
  peak_bf16 = matmul_peak(jnp.bfloat16, peak_n)
  kind = jax.devices()[0].device_kind
  figures = {"config": args.config, "devices": f"{jax.device_count()} × {kind}"}
  if f32 is not None:
    figures.update({
        "tokens_per_s": round(f32["tokens_per_s"], 1),
        "model_flops_per_s": round(f32["model_flops_per_s"] / 1e9, 2) * 1e9,
        "matmul_peak_flops_per_s": round(peak_f32 / 1e9, 2) * 1e9,
        "mfu": round(f32["model_flops_per_s"] / peak_f32, 3),
        "step_s": round(f32["step_s"], 3),
        "bf16_speedup": round(bf16["tokens_per_s"] / f32["tokens_per_s"], 3)})
  figures.update({
      "bf16_tokens_per_s": round(bf16["tokens_per_s"], 1), "bf16_step_s": round(bf16["step_s"], 3),
      "bf16_matmul_peak_flops_per_s": round(peak_bf16 / 1e9, 2) * 1e9,
      "bf16_mfu_vs_bf16_peak": round(bf16["model_flops_per_s"] / peak_bf16, 3)})
  if peak_bf16_flops(kind):
    figures["bf16_mfu_vs_device_peak"] = round(
        bf16["model_flops_per_s"] / (peak_bf16_flops(kind) * jax.device_count()), 3)
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
