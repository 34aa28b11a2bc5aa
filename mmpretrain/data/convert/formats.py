"""The input formats: how one piece of input becomes keyed records.

A reader takes a `Piece` and the source's options and yields `(key, record)` pairs: the
record a dict of its format's features, or a `Corrupt` naming why that input record cannot
become an example. The key names the record by where it sits in its file (`name@byte`,
`name#row`, `name/member`), so it is the same whatever the pieces or workers; it decides
the held-out split.
"""
import dataclasses
import io
import json
import posixpath
import tarfile
import zlib
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmpretrain import storage
from mmpretrain.data import sources
from mmpretrain.data.convert import inputs
from mmpretrain.data.convert.options import SourceOptions
from mmpretrain.image_files import png_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PARQUET_BATCH_ROWS = 256         # rows decoded at a time: bounded memory for image rows

_BYTES = tfds.features.Tensor(shape=(), dtype=np.object_)
_BYTES_LIST = tfds.features.Tensor(shape=(None,), dtype=np.object_)
TEXT = {"text": tfds.features.Text()}
IMAGE_TEXT = {"image": _BYTES, "caption": tfds.features.Text()}
VIDEO = {"frames": _BYTES_LIST, "fps": np.float32, "caption": tfds.features.Text()}
EPISODES = {"frames": _BYTES_LIST, "actions": tfds.features.Sequence(tfds.features.Text()),
            "mission": tfds.features.Text()}
VQA = {"image": _BYTES, "question": tfds.features.Text(),
       "answers": tfds.features.Sequence(tfds.features.Text())}


class Corrupt(Exception):
  """One input record that cannot become an example; `reason` names what was wrong."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


Records = Iterator[tuple[str, "dict | Corrupt"]]


def _json(line: bytes):
  try:
    return json.loads(line)
  except ValueError as e:
    raise Corrupt("bad_json") from e


def checked_image(data: bytes) -> bytes:
  """The image bytes as stored, once Pillow has decoded them whole."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure: corrupt
    raise Corrupt("bad_image") from e
  return data


def _keyed_lines(piece: inputs.Piece, o: SourceOptions):
  for offset, line in inputs.lines(piece, o.compression):
    yield f"{piece.name}@{offset}", line


def read_jsonl(piece, o: SourceOptions) -> Records:
  for key, line in _keyed_lines(piece, o):
    try:
      yield key, {"text": str(_json(line)[o.text_field])}
    except (KeyError, TypeError):
      yield key, Corrupt("missing_field")
    except Corrupt as e:
      yield key, e


def parquet_rows(piece, columns) -> Iterator[tuple[int, dict]]:
  """(row index in the file, row) of the piece's row groups, a batch at a time."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  try:
    with storage.open_read(piece.path) as f:
      table = pq.ParquetFile(f)
      stop = table.metadata.num_row_groups if piece.stop is None else piece.stop
      row = piece.first_row
      for batch in table.iter_batches(PARQUET_BATCH_ROWS, range(piece.start, stop),
                                      columns=list(columns)):
        for values in batch.to_pylist():
          yield row, values
          row += 1
  except Exception as e:  # pylint: disable=broad-except  # unreadable file or missing column
    raise Corrupt("bad_parquet") from e


def _parquet_records(piece, columns, record_of) -> Records:
  rows = parquet_rows(piece, columns)
  while True:
    try:
      row, values = next(rows)
    except StopIteration:
      return
    except Corrupt as e:                 # the rows before the damage are kept
      yield piece.name, e
      return
    try:
      yield f"{piece.name}#{row}", record_of(values)
    except Corrupt as e:
      yield f"{piece.name}#{row}", e


def read_parquet(piece, o: SourceOptions) -> Records:
  def record_of(values):
    if values[o.text_field] is None:
      raise Corrupt("missing_field")
    return {"text": str(values[o.text_field])}
  return _parquet_records(piece, [o.text_field], record_of)


def read_image_parquet(piece, o: SourceOptions) -> Records:
  def record_of(values):
    image, caption = values[o.image_field], values[o.caption_field]
    if isinstance(image, dict):          # the Hugging Face layout: {"bytes": …, "path": …}
      image = image.get("bytes")
    if image is None or caption is None:
      raise Corrupt("missing_field")
    return {"image": checked_image(image), "caption": str(caption)}
  return _parquet_records(piece, [o.image_field, o.caption_field], record_of)


def read_text_files(piece, o: SourceOptions) -> Records:
  """One document a file: the file is the record, so it is read whole."""
  with inputs.open_piece(piece, o.compression) as f:
    data = f.read()
  try:
    yield piece.name, {"text": data.decode("utf-8")}
  except UnicodeDecodeError:
    yield piece.name, Corrupt("bad_text")


def _sample_of(parts: dict[str, bytes], o: SourceOptions):
  image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
  if image is None:
    raise Corrupt("missing_image")
  try:
    if ".txt" in parts:
      caption = parts[".txt"].decode("utf-8")
    elif ".json" in parts:
      caption = str(_json(parts[".json"])[o.caption_field])
    else:
      raise Corrupt("missing_caption")
  except (KeyError, TypeError, UnicodeDecodeError) as e:
    raise Corrupt("missing_caption") from e
  return {"image": checked_image(image), "caption": caption}


def _tar_samples(piece, o: SourceOptions):
  """(sample key, {suffix: bytes}) of a tar read as a stream: a sample's files are
  adjacent (the webdataset convention)."""
  key, parts = None, {}
  with inputs.open_piece(piece, o.compression) as f, tarfile.open(fileobj=f, mode="r|") as tar:
    for member in tar:
      if not member.isfile():
        continue
      directory, base = posixpath.split(member.name)
      stem, _, suffix = base.partition(".")
      member_key = posixpath.join(directory, stem)
      if member_key != key and key is not None:
        yield key, parts
        parts = {}
      key = member_key
      parts["." + suffix.lower()] = tar.extractfile(member).read()
  if key is not None:
    yield key, parts


def read_webdataset(piece, o: SourceOptions) -> Records:
  samples = _tar_samples(piece, o)
  while True:
    try:
      key, parts = next(samples)
    except StopIteration:
      return
    except (tarfile.TarError, EOFError, OSError, zlib.error):
      yield piece.name, Corrupt("bad_tar")     # the samples before the damage are kept
      return
    key = f"{piece.name}/{key}"
    try:
      yield key, _sample_of(parts, o)
    except Corrupt as e:
      yield key, e


def _entries(piece, o: SourceOptions, record_of: Callable) -> Records:
  """Records of a JSON-lines list: `record_of(entry, directory)` of each line, where the
  entry names its files relative to the list's `directory`."""
  directory = storage.parent(piece.path)
  for key, line in _keyed_lines(piece, o):
    try:
      yield key, record_of(_json(line), directory)
    except (KeyError, TypeError):
      yield key, Corrupt("missing_field")
    except FileNotFoundError:
      yield key, Corrupt("missing_file")
    except Corrupt as e:
      yield key, e


def _listed(piece, o: SourceOptions, record_of: Callable) -> Records:
  """Records of a folder format: `record_of(file bytes, caption)` of each listed file."""
  return _entries(piece, o, lambda entry, directory: record_of(
      storage.read_bytes(storage.join(directory, entry[o.file_field])),
      str(entry[o.caption_field])))


def read_image_folder(piece, o: SourceOptions) -> Records:
  return _listed(piece, o, lambda data, caption: {"image": checked_image(data),
                                                  "caption": caption})


def _vqa_record(entry: dict, directory: str) -> dict:
  image, question, answers = entry["image"], entry["question"], entry["answers"]
  if not isinstance(answers, list) or not answers:
    raise Corrupt("bad_answers")
  data = checked_image(storage.read_bytes(storage.join(directory, image)))
  return {"image": data, "question": str(question), "answers": [str(a) for a in answers]}


def read_vqa_jsonl(piece, o: SourceOptions) -> Records:
  """JSON lines of questions: `image` (a path relative to the file), `question` and
  `answers` (every annotator's answer, a list)."""
  return _entries(piece, o, _vqa_record)


def video_frames(data: bytes, o: SourceOptions) -> np.ndarray:
  """The first `max_frames` frames at `fps`, frame_size² RGB."""
  frames = []
  try:
    for (frame,) in sources.decode_clips(io.BytesIO(data), o.fps, 1, o.frame_size):
      frames.append(frame)
      if len(frames) == o.max_frames:
        break
  except Exception as e:  # pylint: disable=broad-except  # any demuxer/decoder failure
    raise Corrupt("bad_video") from e
  if not frames:
    raise Corrupt("bad_video")
  return np.stack(frames)


def read_video_folder(piece, o: SourceOptions) -> Records:
  def record_of(data, caption):
    return {"frames": [png_bytes(f) for f in video_frames(data, o)], "fps": float(o.fps),
            "caption": caption}
  return _listed(piece, o, record_of)


def action_texts(actions, o: SourceOptions) -> list[str]:
  """Per-step action names, or numeric actions [T−1, K] as text with their time offset."""
  actions = np.asarray(actions)
  if actions.dtype.kind in "US":
    return [str(a) for a in actions]
  names = list(o.action_names) or [f"a{k}" for k in range(actions.shape[-1])]
  if actions.ndim != 2 or actions.shape[1] != len(names):
    raise Corrupt("bad_actions")
  offset = f"t+{o.action_seconds:g}s"
  return [" ".join([offset] + [f"{n}={v:+.2f}" for n, v in zip(names, row)]) for row in actions]


def read_episode_list(piece, o: SourceOptions) -> Records:
  """JSON lines of episodes: `frames` (image paths relative to the list), `actions`
  (names, or lists of numbers), optional `mission`."""
  directory = storage.parent(piece.path)
  for key, line in _keyed_lines(piece, o):
    try:
      entry = _json(line)
      frames = [checked_image(storage.read_bytes(storage.join(directory, f)))
                for f in entry["frames"]]
      actions = action_texts(entry["actions"], o)
      if len(actions) != len(frames) - 1:
        raise Corrupt("bad_episode")
      yield key, {"frames": frames, "actions": actions, "mission": str(entry.get("mission", ""))}
    except (KeyError, TypeError, ValueError):
      yield key, Corrupt("bad_episode")
    except FileNotFoundError:
      yield key, Corrupt("missing_file")
    except Corrupt as e:
      yield key, e


def read_episodes(piece, o: SourceOptions) -> Records:
  """One episode a `.npz` file (np.load needs the whole file: it is one record)."""
  try:
    with inputs.open_piece(piece, o.compression) as f:
      data = io.BytesIO(f.read())
    with np.load(data, allow_pickle=False) as episode:
      frames, actions = episode["frames"], episode["actions"]
      mission = str(episode["mission"]) if "mission" in episode else ""
  except (KeyError, ValueError, OSError, EOFError, zlib.error):
    yield piece.name, Corrupt("bad_episode")
    return
  if frames.ndim != 4 or frames.dtype != np.uint8 or len(actions) != len(frames) - 1:
    yield piece.name, Corrupt("bad_episode")
    return
  try:
    yield piece.name, {"frames": [png_bytes(f) for f in frames],
                       "actions": action_texts(actions, o), "mission": mission}
  except Corrupt as e:
    yield piece.name, e


@dataclasses.dataclass(frozen=True)
class Format:
  read: Callable[[inputs.Piece, SourceOptions], Records]
  features: dict
  split_by: str                  # how its files become pieces: lines | list | row_groups | file

  def piece_bytes(self, o: SourceOptions) -> int:
    return o.list_piece_bytes if self.split_by == "list" else o.piece_bytes

  @property
  def planned_as(self) -> str:
    return "lines" if self.split_by == "list" else self.split_by


FORMATS = {
    "jsonl": Format(read_jsonl, TEXT, "lines"),
    "parquet": Format(read_parquet, TEXT, "row_groups"),
    "text_files": Format(read_text_files, TEXT, "file"),
    "webdataset": Format(read_webdataset, IMAGE_TEXT, "file"),
    "image_parquet": Format(read_image_parquet, IMAGE_TEXT, "row_groups"),
    "image_folder": Format(read_image_folder, IMAGE_TEXT, "list"),
    "video_folder": Format(read_video_folder, VIDEO, "list"),
    "vqa_jsonl": Format(read_vqa_jsonl, VQA, "list"),
    "episodes": Format(read_episodes, EPISODES, "file"),
    "episode_list": Format(read_episode_list, EPISODES, "list"),
}


def format_of(o: SourceOptions) -> Format:
  """The source's format; an unknown one is refused with the list."""
  if o.format not in FORMATS:
    raise ValueError(f"source format {o.format!r} is not one of {sorted(FORMATS)}")
  return FORMATS[o.format]
