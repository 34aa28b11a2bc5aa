"""Grain pipeline: per-stream record sources -> documents -> weighted mixture -> packed batches.

Each stream is a grain MapDataset of documents (shuffled, repeated, with a per-record RNG
so the whole stream is a deterministic function of the seed). Streams are mixed by the
config's weights, packed into rows and batched. The iterator's state is checkpointable.
"""
import os

import grain
import numpy as np

from mmpretrain.data import documents, sources
from mmpretrain.data.packing import PackIterDataset, RowSpec
from mmpretrain.tokenizers.text import TextTokenizer
from mmpretrain.tokenizers.visual import make_representation, tokens_per_frame


def tokenizer_path(config) -> str:
  return config.data.tokenizer.path or os.path.join(config.data.data_dir, "tokenizer.model")


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


def text_stream(config, tok: TextTokenizer, split: str):
  """Shakespeare excerpts as plain text documents."""
  records = grain.MapDataset.source(sources.shakespeare_documents(split, config.data.text_doc_chars))

  def to_document(text, rng):
    del rng
    return documents.text_document(tok.encode(text), tok.bos_id, tok.eos_id)
  return records, to_document


def image_text_stream(config, tok: TextTokenizer, split: str):
  """Captioned MNIST digits, as generation or understanding documents."""
  images, labels = sources.mnist_digits(split)
  d = config.data
  specials = dict(bos=tok.bos_id, eos=tok.eos_id, boi=tok.boi_id, eoi=tok.eoi_id)

  def to_document(index, rng: np.random.Generator):
    frame = documents.fit_frame(images[index], d.image_size, d.image_channels)
    caption = tok.encode(sources.digit_caption(int(labels[index])))
    if rng.random() < d.generation_ratio:
      if rng.random() < d.caption_dropout:
        caption = []            # unconditional example for classifier-free guidance
      return documents.generation_document(caption, frame, **specials)
    return documents.understanding_document(caption, frame, **specials)
  return grain.MapDataset.range(len(labels)), to_document


# name -> (config, tokenizer, split) -> (records MapDataset, to_document(record, rng))
STREAM_BUILDERS = {"text": text_stream, "image_text": image_text_stream}


def document_mixture(config, tok: TextTokenizer, split: str, seed: int) -> grain.MapDataset:
  """Weighted mixture of the configured streams, each shuffled and repeated forever.

  The per-record RNG of `random_map` depends on the seed and the position in the repeated
  stream, so every epoch draws fresh orderings and caption dropouts, reproducibly.
  """
  streams, weights = [], []
  for name, weight in sorted(config.data.mixture.items()):
    if weight <= 0:
      continue
    records, to_document = STREAM_BUILDERS[name](config, tok, split)
    streams.append(records.shuffle(seed=seed).repeat().random_map(to_document, seed=seed))
    weights.append(weight)
  return streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)


def make_batches(config, tok: TextTokenizer, *, split: str = "train", batch_size: int | None = None,
                 shard_index: int = 0, shard_count: int = 1, seed: int | None = None):
  """Returns a checkpointable grain iterator over packed batches (dicts of numpy arrays).

  Each process reads a disjoint shard of the document stream and batches its share of
  the global batch.
  """
  batch_size = batch_size or config.data.batch_size // shard_count
  seed = config.seed if seed is None else seed
  docs = document_mixture(config, tok, split, seed)[shard_index::shard_count]
  rows = PackIterDataset(docs.to_iter_dataset(), row_spec(config))
  return iter(rows.batch(batch_size, drop_remainder=True))
