"""Grain pipeline: TFDS records -> documents per stream -> weighted mixture -> packed batches.

Each stream is a grain MapDataset of documents (shuffled, repeated, with a per-record RNG
so the whole stream is a deterministic function of the seed). Streams are mixed by the
config's weights, sharded by process, packed into rows and batched, optionally in worker
processes. The iterator's state is checkpointable (get_state/set_state, grain.checkpoint).
"""
import os

import grain
from absl import flags

from mmpretrain.data import builders, documents, streams
from mmpretrain.data.packing import PackIterDataset, RowSpec
from mmpretrain.tokenizers.text import TextTokenizer
from mmpretrain.tokenizers.visual import make_representation, tokens_per_frame


def tokenizer_path(config) -> str:
  """The configured tokenizer, or the one `prepare` trains: one file per vocabulary size."""
  vocab_size = config.data.tokenizer.vocab_size
  return config.data.tokenizer.path or os.path.join(config.data.data_dir,
                                                    f"tokenizer_{vocab_size}.model")


def load_tokenizer(config) -> TextTokenizer:
  tok = TextTokenizer(tokenizer_path(config))
  if tok.vocab_size != config.model.vocab_size:
    raise ValueError(
        f"tokenizer {tokenizer_path(config)!r} has {tok.vocab_size} ids but "
        f"config.model.vocab_size={config.model.vocab_size}: set "
        f"--config.data.tokenizer.vocab_size={tok.vocab_size} or re-run mmpretrain prepare")
  return tok


def row_spec(config) -> RowSpec:
  rep = make_representation(config)
  d = config.data
  return RowSpec(seq_len=d.seq_len, max_frames=d.max_frames,
                 tokens_per_frame=tokens_per_frame(rep.latent_grid, config.visual.patch_size),
                 frame_shape=(d.image_size, d.image_size, d.image_channels))


def dataset_records(config, name: str, split: str) -> grain.MapDataset:
  """One split of a configured dataset as a grain MapDataset of raw records."""
  spec = config.data.datasets[name]
  tfds_split = spec.train_split if split == "train" else spec.eval_split
  source = builders.open_split(spec.tfds_name, tfds_split, spec.data_dir or config.data.data_dir,
                               spec.version)
  return grain.MapDataset.source(source)


def _canonical(record: dict, fields, needed: tuple[str, ...], dataset: str) -> dict:
  """Renames a record's fields to the stream's canonical names (optional ones if present)."""
  missing = [f for f in needed if fields.get(f) not in record]
  if missing:
    raise KeyError(f"dataset {dataset!r} records have fields {sorted(record)}; the stream "
                   f"needs {missing}: map them in config.data.datasets.{dataset}.fields")
  return {canonical: record[key] for canonical, key in fields.items() if key in record}


def stream_documents(config, tok: TextTokenizer, stream: str, split: str, seed: int,
                     shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """A stream's datasets, each shuffled, repeated and turned into documents, then mixed.

  The per-record RNG of `random_map` depends on the seed and the position in the repeated
  stream, so every epoch draws fresh crops, orderings and caption dropouts, reproducibly.
  A record that cannot become a document yields `Skipped(reason)`. `shard` = (index,
  count) keeps every count-th record of each dataset: processes read disjoint records.
  """
  needed, make_document = streams.STREAMS[stream]
  ctx = streams.StreamContext(config, tok, stream)
  parts, weights = [], []
  for name, weight in sorted(config.data.streams[stream].datasets.items()):
    if weight <= 0:
      continue
    fields = config.data.datasets[name].fields

    def to_document(record, rng, fields=fields, name=name):
      try:
        return make_document(ctx, _canonical(record, fields, needed, name), rng)
      except streams.BadRecord as e:
        return documents.Skipped(e.reason)
    records = dataset_records(config, name, split)[shard[0]::shard[1]]
    parts.append(records.shuffle(seed=seed).repeat().random_map(to_document, seed=seed))
    weights.append(weight)
  return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)


def document_mixture(config, tok: TextTokenizer, split: str, seed: int,
                     shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """The configured streams mixed by `config.data.mixture` (weight 0 leaves one out)."""
  parts, weights = [], []
  for stream, weight in sorted(config.data.mixture.items()):
    if weight > 0:
      parts.append(stream_documents(config, tok, stream, split, seed, shard))
      weights.append(weight)
  return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)


def make_batches(config, tok: TextTokenizer, *, split: str = "train", batch_size: int | None = None,
                 shard_index: int = 0, shard_count: int = 1, seed: int | None = None):
  """Returns a checkpointable grain iterator over packed batches (dicts of numpy arrays).

  Each process reads a disjoint shard of every dataset and batches its share of the
  global batch (`jax.make_array_from_process_local_data` assembles the global one).
  With `config.data.num_workers` > 0 documents are made and packed in worker processes.
  """
  if config.data.batch_size % shard_count:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} does not split over "
                     f"{shard_count} processes: use a multiple of {shard_count}")
  batch_size = batch_size or config.data.batch_size // shard_count
  seed = config.seed if seed is None else seed
  docs = document_mixture(config, tok, split, seed, (shard_index, shard_count))
  rows = PackIterDataset(docs.to_iter_dataset(), row_spec(config))
  batches = rows.batch(batch_size, drop_remainder=True)
  if config.data.num_workers > 0:
    if not flags.FLAGS.is_parsed():   # grain's workers read its absl flags (outside absl.app)
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers,
        per_worker_buffer_size=config.data.worker_buffer_size))
  return iter(batches)
