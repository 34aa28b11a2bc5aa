"""Batches of single images with their captions (and class labels where a dataset has them)
for the representation stages: the contrastive encoder, the RAE decoder, the VAE and the
representation evals. Records come from the same TFDS datasets as the unified model's
image–text stream; undecodable images and empty captions are skipped and counted.

A stage trains on `stage_batches`: like the unified model's data, `config.data.shards`
streams of batch_size/shards images make up each global batch, a process loads the shards
of its rows, and the iterators' positions are checkpointed per shard.
"""
import grain
import numpy as np

from mmpretrain.data import pipeline, records, streams
from mmpretrain.tokenizers.text import TextTokenizer

NO_LABEL = -1


class _Example:
  """What one record became: arrays, or the reason it was skipped."""

  def __init__(self, arrays=None, skipped: str | None = None):
    self.arrays, self.skipped = arrays, skipped


def _example(record, fields, dataset, size, channels, tok, caption_len,
             labelled: bool) -> _Example:
  if isinstance(record, records.Unreadable):
    return _Example(skipped="unreadable")
  record = pipeline.canonical(record, fields, ("image", "caption"), dataset)
  if labelled and "label" not in record:
    raise ValueError(f"dataset {dataset!r} has no class labels (map a `label` field in "
                     f"config.data.datasets.{dataset}.fields)")
  try:
    image = streams.decode_frame(record["image"], size, channels)
  except streams.BadRecord as e:
    return _Example(skipped=e.reason)
  ids = tok.encode(streams.as_text(record["caption"]))[:caption_len]
  if not ids:
    return _Example(skipped="empty")
  caption = np.zeros(caption_len, np.int32)
  caption[:len(ids)] = ids
  label = int(record["label"]) if "label" in record else NO_LABEL
  return _Example({"images": image, "captions": caption, "label": np.int32(label)})


class ImageBatches:
  """Iterates dicts of `images` uint8 [B, H, W, C], `captions` int32 [B, L] (0-padded) and
  `label` int32 [B] (NO_LABEL where the dataset has none); `skipped` counts dropped records.
  Checkpointable: its state is the position in the examples and the counts.
  """

  def __init__(self, examples, batch_size: int):
    self._examples, self.batch_size = examples, batch_size
    self.skipped: dict[str, int] = {}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    """The next batch; a one-pass stream ends with a short batch of what is left."""
    rows = []
    while len(rows) < self.batch_size:
      try:
        example = next(self._examples)
      except StopIteration:
        if rows:
          break
        raise
      if example.skipped:
        self.skipped[example.skipped] = self.skipped.get(example.skipped, 0) + 1
      else:
        rows.append(example.arrays)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def get_state(self) -> dict:
    return {"examples": self._examples.get_state(), "skipped": dict(self.skipped)}

  def set_state(self, state: dict) -> None:
    self._examples.set_state(state["examples"])
    self.skipped = dict(state["skipped"])


def image_batches(config, tok: TextTokenizer, datasets: dict[str, float], *, split: str,
                  batch_size: int, caption_len: int, seed: int, repeat: bool = True,
                  shard: tuple[int, int] = (0, 1), labelled: bool = False) -> ImageBatches:
  """Weighted mixture of `datasets` (names in config.data.datasets), shuffled each epoch;
  `repeat=False` makes one pass (evaluation). `shard` = (index, count) keeps every
  count-th record of each dataset, shuffled with seed + index. `labelled`: a record
  without a class label is an error."""
  data = config.data
  index, count = shard
  parts, weights = [], []
  for name, weight in sorted(datasets.items()):
    if weight <= 0:
      continue
    fields = data.datasets[name].fields
    dataset = pipeline.dataset_records(config, name, split)[index::count]
    dataset = dataset.shuffle(seed=seed + index)
    dataset = dataset.repeat() if repeat else dataset
    parts.append(dataset.map(
        lambda r, fields=fields, name=name: _example(r, fields, name, data.image_size,
                                                     data.image_channels, tok, caption_len,
                                                     labelled)))
    weights.append(weight)
  if not parts:
    raise ValueError(f"no dataset with a positive weight in {dict(datasets)}")
  examples = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
  return ImageBatches(iter(examples.to_iter_dataset()), batch_size)


def stage_batches(config, tok: TextTokenizer, datasets: dict[str, float], *, caption_len: int,
                  rows: range | None = None, labelled: bool = False) -> pipeline.ShardedBatches:
  """A stage's training data: rows `rows` (default: all, `sharding.process_rows` on a
  multi-process job) of every global batch of config.data.batch_size images, made of the
  data shards that cover them (`image_batches` of batch_size/shards images each)."""
  data = config.data
  per_shard = data.batch_size // data.shards
  return pipeline.ShardedBatches(
      {s: image_batches(config, tok, datasets, split="train", batch_size=per_shard,
                        caption_len=caption_len, seed=config.seed, shard=(s, data.shards),
                        labelled=labelled)
       for s in pipeline.shards_of_rows(config, rows)}, data.shards)


def skipped_records(batches: pipeline.ShardedBatches) -> dict[str, int]:
  """Records this process's shards of `stage_batches` dropped so far, per reason."""
  total: dict[str, int] = {}
  for shard in batches.iterators.values():
    for reason, count in shard.skipped.items():
      total[reason] = total.get(reason, 0) + count
  return total
