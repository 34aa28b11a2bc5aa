"""Budgets in tokens: a run sized by train.tokens trains the steps that hold them."""
import contextlib
import io
import json
import math

import pytest

from conftest import tiny_config
from mmpretrain.train.loop import train


def tokens_run(data_dir):
  """tiny_config sized by tokens: 3.5 steps' worth of 8 rows × 128 positions."""
  c = tiny_config(data_dir)
  c.train.num_steps, c.train.tokens = 0, 3.5 * 8 * 128
  c.train.log_every, c.checkpoint.every_steps, c.eval.every_steps = 1, 0, 0
  c.sample.captions = []
  return c


def read_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tokens_workdir(data_dir, tmp_path_factory):
  """A run sized by train.tokens; its workdir and what it printed."""
  workdir, printed = tmp_path_factory.mktemp("tokens_run"), io.StringIO()
  with contextlib.redirect_stdout(printed):
    train(tokens_run(data_dir), str(workdir))
  return workdir, printed.getvalue().splitlines()


def test_a_run_sized_in_tokens_trains_the_steps_that_hold_them(tokens_workdir):
  workdir, printed = tokens_workdir
  assert ("train: 4 steps of 1,024 tokens = 4,096 tokens (set by train.tokens), from step 0"
          in printed)
  with open(workdir / "summary.json", encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["length"] == {"num_steps": 4, "tokens_per_step": 1024, "tokens": 4096,
                               "set_by": "train.tokens"}
  assert summary["last"]["step"] == 3
  # The schedule spans the 4 steps: warmup, then cosine down to the floor at step 4.
  o = tokens_run("").optimizer
  peak, warmup, floor = o.learning_rate, o.warmup_steps, o.min_lr_ratio
  rates = {m["step"]: m["train/learning_rate"] for m in read_jsonl(workdir / "metrics.jsonl")
           if "train/learning_rate" in m}
  cosine = 0.5 * (1 + math.cos(math.pi * (3 - warmup) / (4 - warmup)))
  assert warmup == 2
  assert rates[3] == pytest.approx(peak * (floor + (1 - floor) * cosine), rel=1e-5)
