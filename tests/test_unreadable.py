"""Records a dataset's files cannot give back (a corrupt array_record region): a named error
by default; with data.on_unreadable='skip', skipped, counted, and resumed identically."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_resumes_identically, config_file, tiny_config
from mmpretrain.data import pipeline
from mmpretrain.data.records import CheckedRecords, UnreadableRecordError
from mmpretrain.train.loop import train
from mmpretrain.tokenizers.visual import row_spec

CORRUPT_SHARE = 0.4          # of the MNIST training file, in the middle


@pytest.fixture(scope="module")
def corrupt_data_dir(data_dir, tmp_path_factory):
  """The prepared data with the middle 40% of mnist_captions' training file overwritten
  (the other datasets and the tokenizer are linked, not copied)."""
  path = tmp_path_factory.mktemp("corrupt_data")
  for name in os.listdir(data_dir):
    if name != "mnist_captions":
      os.symlink(os.path.join(data_dir, name), path / name)
  shutil.copytree(os.path.join(data_dir, "mnist_captions"), path / "mnist_captions")
  for root, _, files in os.walk(path / "mnist_captions"):
    for f in files:
      if "train.array_record" in f:
        with open(os.path.join(root, f), "r+b") as fh:
          size = fh.seek(0, os.SEEK_END)
          start = int(size * (1 - CORRUPT_SHARE) / 2)
          fh.seek(start)
          fh.write(bytes(np.random.default_rng(0).integers(0, 256, int(size * CORRUPT_SHARE),
                                                           dtype=np.uint8)))
  return str(path)


def corrupt_config(data_dir, on_unreadable="error", max_fraction=0.5):
  c = tiny_config(data_dir)
  c.data.on_unreadable, c.data.max_unreadable_fraction = on_unreadable, max_fraction
  return c


def test_an_unreadable_record_is_a_named_error(corrupt_data_dir, tokenizer):
  config = corrupt_config(corrupt_data_dir)
  batches = pipeline.make_batches(config, tokenizer, row_spec(config))
  with pytest.raises(UnreadableRecordError) as error:
    for _ in range(3):
      next(batches)
  message = str(error.value)
  assert message.startswith("dataset 'mnist_captions': record ")
  assert "of split 'train' in " in message and "mnist_captions-train.array_record" in message
  assert "mmpretrain prepare --config=<your config> --datasets=mnist_captions --rebuild" in message
  assert "--config.data.on_unreadable=skip" in message


def test_skipped_records_are_counted_and_resume_identically(corrupt_data_dir, tokenizer):
  config = corrupt_config(corrupt_data_dir, "skip")
  batches = pipeline.make_batches(config, tokenizer, row_spec(config))
  skipped = sum(int(next(batches)["skipped_unreadable"].sum()) for _ in range(4))
  assert skipped > 0
  state = batches.get_state()
  expected = [next(batches) for _ in range(3)]
  assert sum(int(b["skipped_unreadable"].sum()) for b in expected) > 0
  assert_resumes_identically(config, tokenizer, state, expected)


def test_too_many_unreadable_records_stop_the_run_by_name(corrupt_data_dir, tokenizer):
  config = corrupt_config(corrupt_data_dir, "skip", 0.001)
  batches = pipeline.make_batches(config, tokenizer, row_spec(config))
  with pytest.raises(UnreadableRecordError, match="more than data.max_unreadable_fraction=0.001"):
    for _ in range(20):
      next(batches)


def test_a_run_over_a_corrupt_shard_finishes_and_logs_the_count(corrupt_data_dir, tmp_path):
  config = corrupt_config(corrupt_data_dir, "skip")
  config.train.num_steps, config.train.log_every = 4, 1
  config.eval.every_steps, config.sample.captions = 0, ["a handwritten digit three"]
  config.sample.images_per_caption = 1
  train(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    logged = [json.loads(line) for line in f]
  assert sum(m.get("data/skipped_unreadable", 0) for m in logged) > 0
  assert all(np.isfinite(m["train/loss"]) for m in logged if "train/loss" in m)


def short_run(data_dir, num_workers: int):
  c = corrupt_config(data_dir)
  c.data.num_workers = num_workers
  c.train.num_steps, c.checkpoint.every_steps = 3, 0
  return c


def one_worker_run(data_dir):
  return short_run(data_dir, 1)


def in_process_run(data_dir):
  return short_run(data_dir, 0)


@pytest.mark.parametrize("make_config", [in_process_run, one_worker_run])
def test_the_cli_names_an_unreadable_record_in_one_line(corrupt_data_dir, tmp_path, make_config):
  """Also when a grain worker met it (it reaches the parent with the worker's traceback)."""
  path = config_file(tmp_path, make_config, corrupt_data_dir)
  out = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "train", f"--config={path}",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-4000:]
  errors = [line for line in out.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and errors[0].startswith(
      "mmpretrain train: error: dataset 'mnist_captions': record "), out.stderr[-4000:]
  assert "mmpretrain prepare --config=<your config> --datasets=mnist_captions --rebuild" in \
      errors[0] and errors[0].endswith("(counted in data/skipped_unreadable)")


class MultiLineFailures:
  def __len__(self):
    return 10

  def __getitem__(self, index):
    raise ValueError(f"bad chunk\n  at record {index}")


def test_the_message_is_one_line_whatever_the_reader_says():
  checked = CheckedRecords(MultiLineFailures(), "d", "train", "Mend it.", skip=False,
                           max_fraction=0.5)
  with pytest.raises(UnreadableRecordError) as error:
    checked[3]  # pylint: disable=pointless-statement
  assert "\n" not in str(error.value)
  assert "(ValueError: bad chunk at record 3). Mend it." in str(error.value)
