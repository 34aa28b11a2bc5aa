"""How many text tokens (with the config's tokenizer) and frames each split of a prepared
dataset holds, counted by a Beam pipeline over record ranges and kept beside the dataset
as `tokens-<tokenizer digest>.json`, so mixtures can be planned in tokens.

    {"tokenizer": path, "splits": {split: {"records": n, "unreadable": n, "frames": n,
                                           "text_tokens": {field: n}}}}

A count made with another tokenizer lives in another file; a count that is there is kept.
"""
import dataclasses
import hashlib

import apache_beam as beam

from mmpretrain import storage
from mmpretrain.data import builders, streams
from mmpretrain.data.convert import runners
from mmpretrain.tokenizers.text import load_text_tokenizer

TEXT_FIELDS = ("text", "caption", "actions", "mission", "question", "answers")
# A field whose documents use one of its values: the count is of that value alone.
TRAINED_VALUES = {"answers": lambda values: [streams.training_answer(values)]}
FRAME_FIELDS = ("image", "frames")
RECORDS_PER_PIECE = 20_000


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Where a prepared dataset is and which of its record keys hold text and frames."""
  tfds_name: str
  data_dir: str
  version: str
  splits: tuple[str, ...]
  text_keys: tuple[tuple[str, str], ...]     # (canonical field, record key)
  frame_keys: tuple[str, ...]

  @classmethod
  def of(cls, config, name: str) -> "Dataset":
    spec = config.data.datasets[name]
    fields = spec.fields
    return cls(spec.tfds_name, spec.data_dir or config.data.data_dir, spec.version,
               (spec.train_split, spec.eval_split),
               tuple((f, fields[f]) for f in TEXT_FIELDS if f in fields),
               tuple(fields[f] for f in FRAME_FIELDS if f in fields))


def counts_path(dataset: Dataset, tokenizer_path: str) -> str:
  digest = hashlib.sha1(storage.read_bytes(tokenizer_path)).hexdigest()[:10]
  directory = builders.dataset_dir(dataset.tfds_name, dataset.data_dir, dataset.version)
  return storage.join(directory, f"tokens-{digest}.json")


def _merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for key, value in b.items():
    out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else (
        out.get(key, 0) + value)
  return out


class CountRange(beam.DoFn):
  """(split, start, stop) -> (split, counts of those records)."""

  def __init__(self, dataset: Dataset, tokenizer_path: str):
    super().__init__()
    self.dataset, self.tokenizer_path = dataset, tokenizer_path
    self.tokenizer, self.sources = None, {}

  def setup(self):
    self.tokenizer = load_text_tokenizer(self.tokenizer_path)

  def _source(self, split: str):
    if split not in self.sources:
      dataset = self.dataset
      self.sources[split] = builders.open_split(dataset.tfds_name, split, dataset.data_dir,
                                                dataset.version)
    return self.sources[split]

  def process(self, piece):
    split, start, stop = piece
    source = self._source(split)
    counts = {"records": 0, "unreadable": 0, "frames": 0,
              "text_tokens": {f: 0 for f, _ in self.dataset.text_keys}}
    for index in range(start, stop):
      try:
        record = source[index]
      except Exception:  # pylint: disable=broad-except  # a corrupt record is counted
        counts["unreadable"] += 1
        continue
      counts["records"] += 1
      for field, key in self.dataset.text_keys:
        value = record.get(key)
        values = value if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) else [
            value]
        if field in TRAINED_VALUES and len(values) > 0:
          values = TRAINED_VALUES[field](values)
        counts["text_tokens"][field] += sum(len(self.tokenizer.encode(streams.as_text(v)))
                                            for v in values if v is not None)
      for key in self.dataset.frame_keys:
        if key in record:
          value = record[key]
          counts["frames"] += len(value) if isinstance(value, (list, tuple)) or getattr(
              value, "ndim", 0) else 1
    yield split, counts


def count_tokens(dataset: Dataset, tokenizer_path: str,
                 runner: runners.Runner = runners.Runner(), workers: int = 2) -> dict:
  """The counts of every split (read back if they are there), counted on `runner`: the
  local one with up to `workers` processes, or a cluster's."""
  path = counts_path(dataset, tokenizer_path)
  if storage.exists(path):
    return storage.read_json(path)
  pieces = []
  for split in dataset.splits:
    n = len(builders.open_split(dataset.tfds_name, split, dataset.data_dir, dataset.version))
    pieces += [(split, s, min(n, s + RECORDS_PER_PIECE)) for s in range(0, n, RECORDS_PER_PIECE)]
  # A worker process costs seconds to start, worth it only for a full piece of records.
  records = sum(end - start for _, start, end in pieces)
  processes = max(1, min(workers, -(-records // RECORDS_PER_PIECE)))
  options = runners.pipeline_options(runner.name, list(runner.args), processes)
  with beam.Pipeline(options=options) as root:
    totals = (root
              | "ranges" >> beam.Create(pieces)
              | "spread" >> beam.Reshuffle()
              | "count" >> beam.ParDo(CountRange(dataset, tokenizer_path))
              | "by_split" >> beam.CombinePerKey(_merge_all)
              | "gather" >> beam.combiners.ToDict())
    _ = totals | "write" >> beam.Map(_write_counts, path, tokenizer_path)
  return storage.read_json(path)


def _merge_all(values) -> dict:
  out = {}
  for value in values:
    out = _merge(out, value)
  return out


def _write_counts(by_split: dict, path: str, tokenizer_path: str) -> None:
  storage.write_json(path, {"tokenizer": tokenizer_path, "splits": by_split})
