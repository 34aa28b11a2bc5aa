"""Data pipeline throughput vs what training consumes, for one config, in one process.

  python benchmarks/data_pipeline.py --config=configs/demo.py [--batches=40]

Prints one JSON line: pipeline tokens/s (non-padding positions of packed batches) with 0,
1 and 2 grain worker processes, the train step's tokens/s on the same batches, and
headroom = best pipeline rate ÷ training rate (target ≥ 5). Run `mmpretrain prepare` first.
"""
import argparse
import copy
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpretrain.config import load_config, validate  # pylint: disable=wrong-import-position
from mmpretrain.data import pipeline  # pylint: disable=wrong-import-position
from mmpretrain.hostalloc import relaunch_with_jemalloc  # pylint: disable=wrong-import-position
from mmpretrain.run import Run  # pylint: disable=wrong-import-position
from mmpretrain.tokenizers.visual import row_spec  # pylint: disable=wrong-import-position
from mmpretrain.train.step import Trainer  # pylint: disable=wrong-import-position
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=wrong-import-position,wrong-import-order


def pipeline_rate(config, tok, workers: int, batches: int) -> float:
  config = copy.deepcopy(config)
  config.data.num_workers = workers
  it = pipeline.make_batches(config, tok, row_spec(config))
  next(it)                       # start-up (worker processes, file handles) is not throughput
  start, tokens = time.perf_counter(), 0
  for _ in range(batches):
    tokens += int((next(it)["segment_ids"] > 0).sum())
  return tokens / (time.perf_counter() - start)


def training_rate(config, tok, steps: int) -> float:
  trainer = Trainer(Run(config), tok.byte_lengths())
  state = trainer.init_state(config.seed)
  it = pipeline.make_batches(config, tok, row_spec(config))
  batches = [next(it) for _ in range(steps + 2)]
  for batch in batches:
    for key in [k for k in batch if k.startswith("skipped_")]:
      del batch[key]
  for batch in batches[:2]:      # compile and warm up
    state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches[2:]:
    state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  tokens = sum(int((b["segment_ids"] > 0).sum()) for b in batches[2:])
  return tokens / (time.perf_counter() - start)


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batches", type=int, default=40, help="batches timed per worker count")
  parser.add_argument("--steps", type=int, default=10, help="train steps timed")
  smoke.add_flag(parser)
  args = parser.parse_args()
  config = validate(load_config(args.config))
  workers = (0, 1, 2)
  if args.smoke:              # one worker process exercises the worker path
    args.batches, args.steps, workers = 2, 1, (0, 1)
  tok = pipeline.load_tokenizer(config)
  rates = {w: pipeline_rate(config, tok, w, args.batches) for w in workers}
  train = training_rate(config, tok, args.steps)
  print(json.dumps({
      "config": args.config,
      **{f"pipeline_tokens_per_s_{w}_workers": round(r, 1) for w, r in rates.items()},
      "train_tokens_per_s": round(train, 1),
      "headroom": round(max(rates.values()) / train, 2),
      "headroom_in_process": round(rates[0] / train, 2),
  }))


if __name__ == "__main__":
  main()
