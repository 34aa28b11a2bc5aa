"""Grain pipeline: TFDS records -> documents per stream -> weighted mixture -> packed batches.

Each stream is a grain MapDataset of documents (shuffled, repeated, with a per-record RNG
so the whole stream is a deterministic function of the seed). Streams are mixed by the
config's weights (shares of documents or of tokens: data/mixture.py), split into
`config.data.shards` data shards (disjoint records), each packed into rows and batched,
optionally in worker processes. A process iterates the shards its devices need; the
iterator's state is checkpointable per shard.
"""
import hashlib
import json
import os

import grain
import ml_collections
import numpy as np
from absl import flags

from mmpretrain import storage
from mmpretrain.batch import RowSpec
from mmpretrain.config import datasets_in_use
from mmpretrain.data import builders, documents, latent_cache, mixture, records, streams
from mmpretrain.data.packing import PackIterDataset
from mmpretrain.tokenizers.text import TextTokenizer, load_text_tokenizer


def tokenizer_path(config) -> str:
  """The configured tokenizer; for a run fine-tuned from another (train.init_from), that
  run's; else the one `prepare` trains on the datasets in use. Its name carries a digest
  of that corpus and the vocabulary size, so that another corpus of the same size trains
  its own instead of reading this one's."""
  if config.data.tokenizer.path:
    return config.data.tokenizer.path
  if config.train.get("init_from"):
    return tokenizer_path(pretrained_config(config.train.init_from))
  vocab_size = config.data.tokenizer.vocab_size
  corpus = [(name, config.data.datasets[name].tfds_name, config.data.datasets[name].version)
            for name in datasets_in_use(config)]
  digest = hashlib.sha256(json.dumps([corpus, vocab_size]).encode()).hexdigest()[:10]
  return os.path.join(config.data.data_dir, f"tokenizer_{vocab_size}_{digest}.model")


def pretrained_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` trained with (its config.json)."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"train.init_from={workdir!r} holds no config.json: point it at "
                            "the workdir of a trained run")
  return ml_collections.ConfigDict(storage.read_json(path))


def load_tokenizer(config) -> TextTokenizer:
  tok = load_text_tokenizer(tokenizer_path(config))
  if tok.vocab_size != config.model.vocab_size:
    raise ValueError(
        f"tokenizer {tokenizer_path(config)!r} has {tok.vocab_size} ids but "
        f"config.model.vocab_size={config.model.vocab_size}: set "
        f"--config.data.tokenizer.vocab_size={tok.vocab_size} or re-run mmpretrain prepare")
  return tok


def dataset_records(config, name: str, split: str,
                    cached_latents: bool = False) -> grain.MapDataset:
  """One split of a configured dataset as a grain MapDataset of raw records; a record that
  cannot be read raises records.UnreadableRecordError or, under data.on_unreadable='skip',
  arrives as a records.Unreadable marker. `cached_latents`: frames come as the latents
  `prepare` cached (data/latent_cache.py) instead of pixels."""
  spec, data = config.data.datasets[name], config.data
  tfds_split = spec.train_split if split == "train" else spec.eval_split
  data_dir = spec.data_dir or data.data_dir
  source = builders.open_split(spec.tfds_name, tfds_split, data_dir, spec.version)
  mend = (f"Rebuild it: mmpretrain prepare --config=<your config> --datasets={name} --rebuild"
          if spec.tfds_name in builders.BUILDERS
          else f"Copy the prepared dataset {spec.tfds_name!r} into {data_dir} again")
  dataset = grain.MapDataset.source(records.CheckedRecords(
      source, name, tfds_split, mend, skip=data.on_unreadable == "skip",
      max_fraction=data.max_unreadable_fraction))
  if cached_latents and latent_cache.visual_fields(config, name):
    dataset = latent_cache.with_cached_latents(dataset, config, name, split)
  return dataset


def canonical(record: dict, fields, needed: tuple[str, ...], dataset: str) -> dict:
  """Renames a record's fields to the stream's canonical names (optional ones if present)."""
  missing = [f for f in needed if fields.get(f) not in record]
  if missing:
    raise KeyError(f"dataset {dataset!r} records have fields {sorted(record)}; the stream "
                   f"needs {missing}: map them in config.data.datasets.{dataset}.fields")
  return {canonical: record[key] for canonical, key in fields.items() if key in record}


def stream_documents(config, tok: TextTokenizer, stream: str, split: str, seed: int,
                     shard: tuple[int, int] = (0, 1),
                     weights: dict[str, float] | None = None) -> grain.MapDataset:
  """A stream's datasets, each shuffled, repeated and turned into documents, then mixed by
  `weights` (documents per dataset; default: the config's weights as document shares).

  The per-record RNG of `random_map` depends on the seed and the position in the repeated
  stream, so every epoch draws fresh crops, orderings and caption dropouts, reproducibly.
  A record that cannot become a document yields `Skipped(reason)`. `shard` = (index,
  count) keeps every count-th record of each dataset: data shards read disjoint records.
  """
  needed, make_document = streams.STREAMS[stream]
  ctx = streams.StreamContext(config, tok, stream)
  weights = mixture.stream_datasets(config, stream) if weights is None else weights
  parts = []
  for name in sorted(weights):
    fields = config.data.datasets[name].fields

    def to_document(record, rng, fields=fields, name=name):
      if isinstance(record, records.Unreadable):
        return documents.Skipped("unreadable")
      try:
        return documents.StreamDocument(
            make_document(ctx, canonical(record, fields, needed, name), rng), stream)
      except streams.BadRecord as e:
        return documents.Skipped(e.reason)
    shard_records = dataset_records(config, name, split,
                                    config.visual.cached_latents)[shard[0]::shard[1]]
    parts.append(shard_records.shuffle(seed=seed).repeat().random_map(to_document, seed=seed))
  return parts[0] if len(parts) == 1 else grain.MapDataset.mix(
      parts, [weights[name] for name in sorted(weights)])


def document_mixture(config, tok: TextTokenizer, split: str, seed: int,
                     shard: tuple[int, int] = (0, 1),
                     weights: mixture.Weights | None = None) -> grain.MapDataset:
  """The configured streams mixed by `weights` (mixture.document_weights; default: the
  config's weights as document shares), a stream of weight 0 left out."""
  weights = weights or mixture.document_weights(config)
  parts = [stream_documents(config, tok, stream, split, seed, shard, weights.datasets[stream])
           for stream in sorted(weights.streams)]
  return parts[0] if len(parts) == 1 else grain.MapDataset.mix(
      parts, [weights.streams[stream] for stream in sorted(weights.streams)])


def shard_batches(config, tok: TextTokenizer, spec: RowSpec, shard: int, split: str, seed: int,
                  weights: mixture.Weights | None = None):
  """A grain iterator over batches of data shard `shard`: batch_size/shards packed rows.

  Shard s draws its crops, orders and dropouts with seed + s, independent of the others.
  """
  data = config.data
  docs = document_mixture(config, tok, split, seed + shard, (shard, data.shards), weights)
  rows = PackIterDataset(docs.to_iter_dataset(), spec)
  batches = rows.batch(data.batch_size // data.shards, drop_remainder=True)
  if data.num_workers > 0:
    if not flags.FLAGS.is_parsed():   # grain's workers read its absl flags (outside absl.app)
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.num_workers, per_worker_buffer_size=data.worker_buffer_size))
  return iter(batches)


class ShardedBatches:
  """This process's data shards stepped together: each batch concatenates one batch of
  every shard, in shard order, so it holds global rows [first shard's rows, last's).

  Checkpointable per shard (`shard_states`), so a run restored with another number of
  processes gives each one the states of the shards it now loads.
  """

  def __init__(self, iterators: dict[int, object], num_shards: int):
    self.iterators, self.num_shards = iterators, num_shards

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [next(it) for it in self.iterators.values()]
    return parts[0] if len(parts) == 1 else {
        k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def shard_states(self) -> dict[int, dict]:
    return {shard: it.get_state() for shard, it in self.iterators.items()}

  def set_shard_states(self, states: dict[int, dict]) -> None:
    for shard, it in self.iterators.items():
      it.set_state(states[shard])

  def get_state(self) -> dict:
    return {str(shard): state for shard, state in self.shard_states().items()}

  def set_state(self, state: dict) -> None:
    self.set_shard_states({int(shard): s for shard, s in state.items()})


def make_batches(config, tok: TextTokenizer, spec: RowSpec, *, split: str = "train",
                 rows: range | None = None, seed: int | None = None) -> ShardedBatches:
  """A checkpointable iterator over rows `rows` (default: all) of each global batch, laid
  out by `spec` (the run's: `Run(config).spec`).

  The global batch is `config.data.shards` shards of batch_size/shards rows, each a
  deterministic function of the seed; `rows` must cover whole shards. A multi-process run
  passes the rows its devices hold (sharding.process_rows), and
  `jax.make_array_from_process_local_data` assembles the global batch.
  """
  seed = config.seed if seed is None else seed
  weights = mixture.document_weights(config, spec.tokens_per_frame, tokenizer_path(config))
  return ShardedBatches({s: shard_batches(config, tok, spec, s, split, seed, weights)
                         for s in shards_of_rows(config, rows)}, config.data.shards)


def shards_of_rows(config, rows: range | None = None) -> range:
  """The data shards that make up rows `rows` (default: all) of each global batch; the
  rows must cover whole shards."""
  data = config.data
  rows = range(data.batch_size) if rows is None else rows
  per_shard = data.batch_size // data.shards
  whole = rows.start % per_shard == 0 and rows.stop % per_shard == 0
  if not whole or not 0 <= rows.start < rows.stop <= data.batch_size:
    raise ValueError(
        f"this process loads rows {rows.start}..{rows.stop - 1} of the global batch, which "
        f"config.data.shards={data.shards} (shards of {per_shard} rows) does not split into "
        "whole shards: set data.shards to a multiple of the number of processes that load data")
  return range(rows.start // per_shard, rows.stop // per_shard)
