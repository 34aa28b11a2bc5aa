"""Batches of single images with their captions (and class labels where a dataset has them)
for the representation stages: the contrastive encoder, the RAE decoder, the VAE and the
representation evals. Records come from the same TFDS datasets as the unified model's
image–text stream; undecodable images and empty captions are skipped and counted.
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


def _example(record, fields, dataset, size, channels, tok, caption_len) -> _Example:
  if isinstance(record, records.Unreadable):
    return _Example(skipped="unreadable")
  record = pipeline.canonical(record, fields, ("image", "caption"), dataset)
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


def image_batches(config, tok: TextTokenizer, datasets: dict[str, float], *, split: str,
                  batch_size: int, caption_len: int, seed: int, repeat: bool = True):
  """Weighted mixture of `datasets` (names in config.data.datasets), shuffled each epoch;
  `repeat=False` makes one pass (evaluation)."""
  d = config.data
  parts, weights = [], []
  for name, weight in sorted(datasets.items()):
    if weight <= 0:
      continue
    fields = d.datasets[name].fields
    dataset = pipeline.dataset_records(config, name, split).shuffle(seed=seed)
    dataset = dataset.repeat() if repeat else dataset
    parts.append(dataset.map(
        lambda r, fields=fields, name=name: _example(r, fields, name, d.image_size,
                                                     d.image_channels, tok, caption_len)))
    weights.append(weight)
  if not parts:
    raise ValueError(f"no dataset with a positive weight in {dict(datasets)}")
  examples = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
  return ImageBatches(iter(examples.to_iter_dataset()), batch_size)
