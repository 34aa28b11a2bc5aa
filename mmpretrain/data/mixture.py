"""The weights grain mixes documents by: the config's own (data.mixture_unit='documents'),
or its weights read as shares of tokens and turned into shares of documents ('tokens').

In tokens, a weight w of a stream or of a dataset inside it becomes the document weight
w / m, where m is the mean number of tokens such a document packs: documents drawn in
proportion to w / m carry tokens in proportion to w. m adds the text a record holds on
average — from the counts `mmpretrain prepare` keeps beside each dataset
(data/token_counts.py, the train split, for training and held-out batches alike) — to the
special tokens and frames of the stream's document layout (data/documents.py), each frame
being the run's tokens per frame.
"""
import dataclasses

import numpy as np

from mmpretrain import storage
from mmpretrain.data import documents

_SPECIALS = {"bos": 0, "eos": 0, "boi": 0, "eoi": 0}     # ids do not change a length


class MissingTokenCounts(FileNotFoundError):
  """A dataset of a mixture in tokens has no counts for the run's tokenizer."""


@dataclasses.dataclass(frozen=True)
class Weights:
  """Document weights: per stream of the mixture, and per dataset inside each stream
  (positive weights only)."""
  streams: dict[str, float]
  datasets: dict[str, dict[str, float]]


def _frames(count: int) -> np.ndarray:
  return np.zeros((count, 1, 1, 1), np.uint8)     # only the number of frames counts


def _per_record(counts: dict, field: str) -> float:
  return counts["text_tokens"].get(field, 0) / counts["records"]


def _text(settings, counts: dict) -> tuple[documents.Document, float]:
  del settings
  return documents.text_document([], 0, 0), _per_record(counts, "text")


def _image_text(settings, counts: dict):
  # Understanding documents have the same special tokens; generation ones drop the caption
  # at the caption_dropout rate.
  kept = 1.0 - settings.generation_ratio * settings.caption_dropout
  return (documents.generation_document([], _frames(1)[0], **_SPECIALS),
          kept * _per_record(counts, "caption"))


def _video(settings, counts: dict):
  del counts
  return documents.video_document(_frames(settings.frames), **_SPECIALS), 0.0


def _action_video(settings, counts: dict):
  # The episode's mission and one of its actions (an episode of n frames has n − 1).
  actions = max(counts["frames"] - counts["records"], 1)
  document = documents.action_video_document(_frames(settings.context_frames), [],
                                             _frames(1)[0], [], **_SPECIALS)
  return document, (_per_record(counts, "mission")
                    + counts["text_tokens"].get("actions", 0) / actions)


def _vqa(settings, counts: dict):
  del settings
  return (documents.vqa_document([], [], _frames(1)[0], **_SPECIALS),
          _per_record(counts, "question") + _per_record(counts, "answers"))


# stream -> (its settings, a split's counts) -> (its document without text, the text
# tokens a document adds on average)
LAYOUTS = {"text": _text, "image_text": _image_text, "video": _video,
           "action_video": _action_video, "vqa": _vqa}


def mean_document_tokens(stream: str, settings, counts: dict, tokens_per_frame: int) -> float:
  """Mean tokens of a document `stream` makes of a record of a split with `counts`."""
  document, text = LAYOUTS[stream](settings, counts)
  return documents.document_length(document, tokens_per_frame) + text


def counts_file(config, name: str, tokenizer_path: str) -> str:
  """Where `prepare` keeps dataset `name`'s counts; raises MissingTokenCounts, naming the
  command that writes them, if they are not there."""
  # Imported here: the module counts with Beam, whose import a run in documents never pays.
  from mmpretrain.data import token_counts  # pylint: disable=import-outside-toplevel
  path = token_counts.counts_path(token_counts.Dataset.of(config, name), tokenizer_path)
  if not storage.exists(path):
    raise MissingTokenCounts(
        f"data.mixture_unit='tokens' needs the token counts of dataset {name!r} ({path} is "
        f"missing): run `mmpretrain prepare --config=<your config> --datasets={name}`")
  return path


def train_counts(config, name: str, tokenizer_path: str) -> dict:
  """The counts of dataset `name`'s train split that `prepare` kept beside it."""
  path = counts_file(config, name, tokenizer_path)
  counts = storage.read_json(path)["splits"][config.data.datasets[name].train_split]
  if counts["records"] == 0:
    raise ValueError(f"dataset {name!r} has no readable train record to weigh its tokens by "
                     f"({path})")
  return counts


def stream_datasets(config, stream: str) -> dict[str, float]:
  """The datasets a stream mixes, by their configured weights (positive ones)."""
  return {n: w for n, w in config.data.streams[stream].datasets.items() if w > 0}


def document_weights(config, tokens_per_frame: int | None = None,
                     tokenizer_path: str = "") -> Weights:
  """The document weights of the config's mixture; in tokens they need the run's tokens
  per frame and its tokenizer (whose counts they read)."""
  data = config.data
  streams = {s: w for s, w in data.mixture.items() if w > 0}
  datasets = {s: stream_datasets(config, s) for s in streams}
  if data.get("mixture_unit", "documents") == "documents":
    return Weights(streams, datasets)
  if tokens_per_frame is None or not tokenizer_path:
    raise ValueError("a mixture in tokens needs the run's tokens per frame and tokenizer")
  for stream in streams:
    settings = data.streams[stream]
    lengths = {name: mean_document_tokens(stream, settings,
                                          train_counts(config, name, tokenizer_path),
                                          tokens_per_frame)
               for name in datasets[stream]}
    shares = datasets[stream]
    datasets[stream] = {name: w / lengths[name] for name, w in shares.items()}
    # The stream's documents, drawn by those weights, hold this many tokens on average.
    mean = sum(shares.values()) / sum(datasets[stream].values())
    streams[stream] /= mean
  return Weights(streams, datasets)
