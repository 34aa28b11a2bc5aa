"""Checkpoint save/restore throughput against this disk's file write rate, in one process.

  python benchmarks/checkpoint.py [--dir=/tmp/mmpretrain_ckpt_bench]

Train state of configs/bench/dense_ref.py (params + AdamW moments, f32). Prints one JSON
line: state_mb; save_mb_per_s (a blocking save, through to the files being complete) and
restore_mb_per_s (best of 3 each); file_write_mb_per_s (numpy arrays of the same total
size written to the same directory and fsynced, as TensorStore's file store does by
default: `file_io_sync`) and save_vs_file_write; the same for page-cache-only writes
(no fsync); the train step time, how long an async save holds up the loop (the call's
return, before the next step can start) and async_block_fraction = that ÷ one step.
Targets: save ≥ 0.5 × file write; async block ≤ 0.1 step.
"""
import argparse
import json
import os
import shutil
import sys
import time

import grain
import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mmpretrain.config import load_config, validate  # pylint: disable=wrong-import-position
from mmpretrain.data.pipeline import ShardedBatches  # pylint: disable=wrong-import-position
from mmpretrain.data.synthetic import interleaved_batch  # pylint: disable=wrong-import-position
from mmpretrain.hostalloc import relaunch_with_jemalloc  # pylint: disable=wrong-import-position
from mmpretrain.train.checkpoint import RunCheckpoints  # pylint: disable=wrong-import-position
from mmpretrain.run import Run  # pylint: disable=wrong-import-position
from mmpretrain.train.step import Trainer  # pylint: disable=wrong-import-position
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import smoke  # pylint: disable=wrong-import-position,wrong-import-order


def small_batches() -> ShardedBatches:
  """The run's data-iterator type over one grain iterator whose state is a few bytes: the
  benchmark measures the train state."""
  return ShardedBatches({0: iter(grain.MapDataset.range(4).to_iter_dataset())}, num_shards=1)


def file_write_rate(directory: str, arrays, fsync: bool) -> float:
  """MB/s of writing `arrays` as .npy files, optionally fsyncing each."""
  os.makedirs(directory, exist_ok=True)
  start = time.perf_counter()
  for index, array in enumerate(arrays):
    with open(os.path.join(directory, f"{index}.npy"), "wb") as f:
      np.save(f, array)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
  elapsed = time.perf_counter() - start
  shutil.rmtree(directory)
  return sum(a.nbytes for a in arrays) / 1e6 / elapsed


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", default="/tmp/mmpretrain_ckpt_bench")
  smoke.add_flag(parser)
  args = parser.parse_args()
  shutil.rmtree(args.dir, ignore_errors=True)
  config = validate(load_config(os.path.join(ROOT, "configs", "bench", "dense_ref.py")))
  passes = 3
  if args.smoke:
    config, passes = smoke.tiny(config), 1
  trainer = Trainer(Run(config), np.ones(config.model.vocab_size, np.float32))
  state = trainer.init_state(0)
  host_arrays = [np.asarray(a) for a in jax.tree.leaves(jax.device_get(state.replace(
      rng=jax.random.key_data(state.rng))))]
  state_mb = sum(a.nbytes for a in host_arrays) / 1e6

  # Best of 3 for every rate: the first pass also pays for fresh page-cache pages.
  sync = RunCheckpoints(os.path.join(args.dir, "sync"), config.checkpoint)
  save_s = restore_s = float("inf")
  for step in range(1, passes + 1):
    start = time.perf_counter()
    sync.save(step, state, small_batches(), config)
    sync.manager.wait_until_finished()
    save_s = min(save_s, time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready(sync.restore(step, trainer.abstract_state()))
    restore_s = min(restore_s, time.perf_counter() - start)
  sync.close()
  files = os.path.join(args.dir, "files")    # best of 3 too
  write_rate = max(file_write_rate(files, host_arrays, fsync=False) for _ in range(passes))
  fsync_rate = max(file_write_rate(files, host_arrays, fsync=True) for _ in range(passes))

  batch = jax.device_put(interleaved_batch(trainer.run.spec, config.data.batch_size,
                                           config.bench["text_tokens_per_row"], 0,
                                           config.model.vocab_size))
  for _ in range(2):                                   # compile, then one warm step
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
  start = time.perf_counter()
  state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  step_s = time.perf_counter() - start
  background = RunCheckpoints(os.path.join(args.dir, "async"), config.checkpoint)
  start = time.perf_counter()
  background.save(int(state.step), state, small_batches(), config)
  block_s = time.perf_counter() - start
  background.close()
  shutil.rmtree(args.dir, ignore_errors=True)

  print(json.dumps({
      "state_mb": round(state_mb, 1),
      "save_mb_per_s": round(state_mb / save_s, 1),
      "restore_mb_per_s": round(state_mb / restore_s, 1),
      "file_write_mb_per_s": round(fsync_rate, 1),
      "save_vs_file_write": round(state_mb / save_s / fsync_rate, 3),
      "file_write_no_fsync_mb_per_s": round(write_rate, 1),
      "save_vs_file_write_no_fsync": round(state_mb / save_s / write_rate, 3),
      "step_s": round(step_s, 3), "async_block_s": round(block_s, 3),
      "async_block_fraction": round(block_s / step_s, 3)}))


if __name__ == "__main__":
  main()
