"""A corpus in the formats it comes in -> a sharded TFDS array_record dataset.

`mmpretrain prepare` converts every dataset of the config whose entry has a `source`
(config.data.datasets.<name>.source, keys in `SOURCE_DEFAULTS`). `FORMATS` maps each
format to its reader and the dataset's features: text (`jsonl`, `parquet`, `text_files`),
image–text (`webdataset`, `image_parquet`, `image_folder`), video (`video_folder`: mp4 /
webm listed with captions) and action-conditioned video (`episodes`: .npz files of frames
and per-step actions, or `episode_list`: JSON lines of episodes whose frames are image
files); docs/data.md has the table.

Continuous actions (NWM's Δx, Δy, Δyaw) become text with their time offset, e.g.
`t+0.25s dx=+0.12 dy=-0.03 dyaw=+0.10` (`action_seconds` per step).

Each input file (for the folder formats, each `records_per_shard` lines of the list) is
one unit of work, converted by one of `workers` processes into one array_record shard
per split in a local staging directory; a unit whose shard is complete is not converted
again, so an interrupted prepare resumes. `validation` globs give the validation split;
without them a deterministic `validation_fraction` of the records is held out. A record
that cannot be read or decoded is counted by reason and skipped. The finished dataset
(shards, dataset_info.json, features.json) goes to `<data_dir>/<tfds_name>/1.0.0` through
`storage`, so a gs:// data dir works like a local one.
"""
import concurrent.futures
import glob as globlib
import hashlib
import io
import json
import multiprocessing
import os
import tarfile
import zlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmpretrain import storage
from mmpretrain.data import sources
from mmpretrain.pixels import png_bytes

VERSION = "1.0.0"
SPLITS = ("train", "validation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

SOURCE_DEFAULTS = {
    "format": "",                  # one of FORMATS; '' = not converted (a TFDS dataset)
    "train": "",                   # glob(s) of the train inputs, comma-separated
    "validation": "",              # glob(s) of the validation inputs ('' = held out)
    "validation_fraction": 0.01,   # held out of the train inputs when `validation` is ''
    "workers": 2,                  # converting processes
    "records_per_shard": 1000,     # lines of a file list per unit (folder formats)
    "text_field": "text",
    "image_field": "image",
    "caption_field": "caption",
    "file_field": "file",
    "fps": 4.0,                    # video: frames per second kept
    "frame_size": 64,              # video: frames center-cropped and resized to this square
    "max_frames": 64,              # video: frames kept from the start of each clip
    "action_names": (),            # episodes: names of numeric action components
    "action_seconds": 1.0,         # episodes: time per step, written before numeric actions
}

_BYTES = tfds.features.Tensor(shape=(), dtype=np.object_)
_BYTES_LIST = tfds.features.Tensor(shape=(None,), dtype=np.object_)
TEXT = {"text": tfds.features.Text()}
IMAGE_TEXT = {"image": _BYTES, "caption": tfds.features.Text()}
VIDEO = {"frames": _BYTES_LIST, "fps": np.float32, "caption": tfds.features.Text()}
EPISODES = {"frames": _BYTES_LIST, "actions": tfds.features.Sequence(tfds.features.Text()),
            "mission": tfds.features.Text()}


class Corrupt(Exception):
  """One input record that cannot become an example; `reason` names what was wrong."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


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


# Readers: (input path, options) -> records (dicts of the format's features), with a
# Corrupt exception in the place of each record that cannot be read.

def read_jsonl(path, o):
  for line in storage.read_bytes(path).splitlines():
    if line.strip():
      try:
        yield {"text": str(_json(line)[o["text_field"]])}
      except (KeyError, TypeError):
        yield Corrupt("missing_field")
      except Corrupt as e:
        yield e


def parquet_rows(path, columns):
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  try:
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)), columns=list(columns))
  except Exception as e:  # pylint: disable=broad-except  # unreadable file or missing column
    raise Corrupt("bad_parquet") from e
  return table.to_pylist()


def read_parquet(path, o):
  try:
    rows = parquet_rows(path, [o["text_field"]])
  except Corrupt as e:
    yield e
    return
  for row in rows:
    text = row[o["text_field"]]
    yield {"text": str(text)} if text is not None else Corrupt("missing_field")


def read_text_files(path, o):
  del o
  try:
    yield {"text": storage.read_bytes(path).decode("utf-8")}
  except UnicodeDecodeError:
    yield Corrupt("bad_text")


def read_webdataset(path, o):
  members: dict[str, dict[str, bytes]] = {}
  try:
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(path))) as tar:
      for member in tar:
        if member.isfile():
          key, _, suffix = os.path.basename(member.name).partition(".")
          key = os.path.join(os.path.dirname(member.name), key)
          members.setdefault(key, {})["." + suffix.lower()] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError):
    yield Corrupt("bad_tar")          # the members read before the damage are kept
  for key in sorted(members):
    parts = members[key]
    image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
    if image is None:
      yield Corrupt("missing_image")
      continue
    try:
      if ".txt" in parts:
        caption = parts[".txt"].decode("utf-8")
      elif ".json" in parts:
        caption = str(_json(parts[".json"])[o["caption_field"]])
      else:
        raise Corrupt("missing_caption")
      yield {"image": checked_image(image), "caption": caption}
    except (KeyError, TypeError, UnicodeDecodeError):
      yield Corrupt("missing_caption")
    except Corrupt as e:
      yield e


def read_image_parquet(path, o):
  try:
    rows = parquet_rows(path, [o["image_field"], o["caption_field"]])
  except Corrupt as e:
    yield e
    return
  for row in rows:
    image, caption = row[o["image_field"]], row[o["caption_field"]]
    if isinstance(image, dict):          # the Hugging Face layout: {"bytes": …, "path": …}
      image = image.get("bytes")
    if image is None or caption is None:
      yield Corrupt("missing_field")
      continue
    try:
      yield {"image": checked_image(image), "caption": str(caption)}
    except Corrupt as e:
      yield e


def listed_files(unit, o):
  """(file path, caption) of one unit of a folder format: lines of a JSON-lines list."""
  path, lines = unit
  for line in lines:
    try:
      entry = _json(line)
      yield storage.join(os.path.dirname(path), entry[o["file_field"]]), str(
          entry[o["caption_field"]])
    except (KeyError, TypeError):
      yield Corrupt("missing_field")
    except Corrupt as e:
      yield e


def read_listed(unit, o, record_of):
  """Records of a folder format: `record_of(file bytes, caption)` for each listed file."""
  for item in listed_files(unit, o):
    if isinstance(item, Corrupt):
      yield item
      continue
    file, caption = item
    try:
      yield record_of(storage.read_bytes(file), caption)
    except FileNotFoundError:
      yield Corrupt("missing_file")
    except Corrupt as e:
      yield e


def read_image_folder(unit, o):
  return read_listed(unit, o, lambda data, caption: {"image": checked_image(data),
                                                     "caption": caption})


def video_frames(data: bytes, o) -> np.ndarray:
  """The first `max_frames` frames at `fps`, frame_size² RGB."""
  frames = []
  try:
    for (frame,) in sources.decode_clips(io.BytesIO(data), o["fps"], 1, o["frame_size"]):
      frames.append(frame)
      if len(frames) == o["max_frames"]:
        break
  except Exception as e:  # pylint: disable=broad-except  # any demuxer/decoder failure
    raise Corrupt("bad_video") from e
  if not frames:
    raise Corrupt("bad_video")
  return np.stack(frames)


def read_video_folder(unit, o):
  def record_of(data, caption):
    return {"frames": [png_bytes(f) for f in video_frames(data, o)], "fps": float(o["fps"]),
            "caption": caption}
  return read_listed(unit, o, record_of)


def action_texts(actions, o) -> list[str]:
  """Per-step action names, or numeric actions [T−1, K] as text with their time offset."""
  actions = np.asarray(actions)
  if actions.dtype.kind in "US":
    return [str(a) for a in actions]
  names = list(o["action_names"]) or [f"a{k}" for k in range(actions.shape[-1])]
  if actions.ndim != 2 or actions.shape[1] != len(names):
    raise Corrupt("bad_actions")
  offset = f"t+{o['action_seconds']:g}s"
  return [" ".join([offset] + [f"{n}={v:+.2f}" for n, v in zip(names, row)]) for row in actions]


def read_episode_list(unit, o):
  """JSON lines of episodes: `frames` (image paths relative to the list), `actions`
  (names, or lists of numbers), optional `mission`."""
  path, lines = unit
  for line in lines:
    try:
      entry = _json(line)
      frames = [checked_image(storage.read_bytes(storage.join(os.path.dirname(path), f)))
                for f in entry["frames"]]
      actions = action_texts(entry["actions"], o)
      if len(actions) != len(frames) - 1:
        raise Corrupt("bad_episode")
      yield {"frames": frames, "actions": actions, "mission": str(entry.get("mission", ""))}
    except (KeyError, TypeError, ValueError):
      yield Corrupt("bad_episode")
    except FileNotFoundError:
      yield Corrupt("missing_file")
    except Corrupt as e:
      yield e


def read_episodes(path, o):
  try:
    with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as episode:
      frames, actions = episode["frames"], episode["actions"]
      mission = str(episode["mission"]) if "mission" in episode else ""
  except (KeyError, ValueError, OSError, zlib.error):
    yield Corrupt("bad_episode")
    return
  if frames.ndim != 4 or frames.dtype != np.uint8 or len(actions) != len(frames) - 1:
    yield Corrupt("bad_episode")
    return
  try:
    yield {"frames": [png_bytes(f) for f in frames], "actions": action_texts(actions, o),
           "mission": mission}
  except Corrupt as e:
    yield e


# format -> (reader, features, whether its inputs are file lists split into units)
FORMATS = {
    "jsonl": (read_jsonl, TEXT, False),
    "parquet": (read_parquet, TEXT, False),
    "text_files": (read_text_files, TEXT, False),
    "webdataset": (read_webdataset, IMAGE_TEXT, False),
    "image_parquet": (read_image_parquet, IMAGE_TEXT, False),
    "image_folder": (read_image_folder, IMAGE_TEXT, True),
    "video_folder": (read_video_folder, VIDEO, True),
    "episodes": (read_episodes, EPISODES, False),
    "episode_list": (read_episode_list, EPISODES, True),
}


def options(source) -> dict:
  """The source's settings over SOURCE_DEFAULTS; an unknown key or format is refused."""
  given = dict(source)
  unknown = sorted(set(given) - set(SOURCE_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown source keys {unknown}; the keys are {sorted(SOURCE_DEFAULTS)}")
  o = {**SOURCE_DEFAULTS, **given}
  if o["format"] not in FORMATS:
    raise ValueError(f"source format {o['format']!r} is not one of {sorted(FORMATS)}")
  if not o["train"]:
    raise ValueError("the source has no `train` inputs: set source.train to a glob")
  o["action_names"] = tuple(o["action_names"])
  return o


def expand(patterns: str) -> list[str]:
  """Paths matching comma-separated globs (local or an object store)."""
  paths = []
  for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
    if storage.is_local(pattern):
      paths.extend(sorted(globlib.glob(pattern)))
    else:
      import fsspec  # pylint: disable=import-outside-toplevel
      fs, _, matched = fsspec.get_fs_token_paths(pattern)
      paths.extend(sorted(fs.unstrip_protocol(m) for m in matched))
  return paths


def units_of(o, split_patterns: str) -> list:
  """The units of work: input files, or chunks of a file list's lines."""
  paths = expand(split_patterns)
  if not paths:
    raise FileNotFoundError(f"no input matches {split_patterns!r}")
  if not FORMATS[o["format"]][2]:
    return paths
  units = []
  for path in paths:
    lines = [l for l in storage.read_bytes(path).splitlines() if l.strip()]
    for start in range(0, len(lines), o["records_per_shard"]):
      units.append((path, lines[start:start + o["records_per_shard"]]))
  return units


def held_out(unit_name: str, index: int, fraction: float) -> bool:
  return zlib.crc32(f"{unit_name}:{index}".encode()) % 100_000 < fraction * 100_000


def array_record_writer(path: str):
  """A writer of one local array_record file, a record at a time (random access)."""
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter
  return ArrayRecordWriter(path, "group_size:1")


def convert_unit(job) -> dict:
  """One unit into `<staging>/<split>-<unit>.array_record` per split it feeds, and a JSON
  record of its counts written last (its presence marks the unit complete)."""
  o, unit, index, staging, splits = job
  reader, features, _ = FORMATS[o["format"]]
  features = tfds.features.FeaturesDict(features)
  # Hold-out keys name the input by its file name (and a list chunk by its first line), so
  # the split does not depend on where the corpus is mounted.
  name = (os.path.basename(unit) if isinstance(unit, str)
          else f"{os.path.basename(unit[0])}:{unit[1][0][:64]!r}")
  writers = {s: array_record_writer(os.path.join(staging, f"{s}-{index:06d}.array_record.tmp"))
             for s in splits}
  counts = {"examples": dict.fromkeys(splits, 0), "corrupt": {}}
  for i, record in enumerate(reader(unit, o)):
    if isinstance(record, Corrupt):
      counts["corrupt"][record.reason] = counts["corrupt"].get(record.reason, 0) + 1
      continue
    held = len(splits) > 1 and held_out(name, i, o["validation_fraction"])
    split = splits[1] if held else splits[0]
    writers[split].write(features.serialize_example(record))
    counts["examples"][split] += 1
  for split, writer in writers.items():
    writer.close()
    path = os.path.join(staging, f"{split}-{index:06d}.array_record")
    os.replace(path + ".tmp", path)
  with open(os.path.join(staging, f"unit-{index:06d}.json.tmp"), "w", encoding="utf-8") as f:
    json.dump(counts, f)
  os.replace(os.path.join(staging, f"unit-{index:06d}.json.tmp"),
             os.path.join(staging, f"unit-{index:06d}.json"))
  return counts


def staging_dir(destination: str) -> str:
  """Where units are written before they are published: beside a local destination, in
  the local cache for an object store (so a rerun on this machine resumes)."""
  if storage.is_local(destination):
    return destination + ".incomplete"
  key = hashlib.sha1(destination.encode()).hexdigest()[:16]
  return os.path.join(os.path.expanduser("~/.cache/mmpretrain/convert"), key)


def convert(source, tfds_name: str, data_dir: str, rebuild: bool = False) -> dict:
  """Converts one source into <data_dir>/<tfds_name>/1.0.0 (a no-op when it is there,
  unless `rebuild`); returns {'path', 'examples': {split: n}, 'corrupt': {reason: n}}."""
  o = options(source)
  destination = storage.join(data_dir, tfds_name, VERSION)
  if storage.exists(storage.join(destination, "dataset_info.json")) and not rebuild:
    return {"path": destination, "examples": None, "corrupt": None}
  staging = staging_dir(destination)
  if rebuild and os.path.isdir(staging):
    storage.rmtree(staging)
  os.makedirs(staging, exist_ok=True)
  jobs = []                              # (options, unit, index, staging, splits it feeds)
  if o["validation"]:
    for split, patterns in (("train", o["train"]), ("validation", o["validation"])):
      jobs += [(o, unit, len(jobs) + k, staging, (split,))
               for k, unit in enumerate(units_of(o, patterns))]
  else:
    jobs = [(o, unit, k, staging, SPLITS) for k, unit in enumerate(units_of(o, o["train"]))]
  done = {j[2] for j in jobs if os.path.exists(os.path.join(staging, f"unit-{j[2]:06d}.json"))}
  todo = [j for j in jobs if j[2] not in done]
  if o["workers"] > 1 and len(todo) > 1:
    context = multiprocessing.get_context("spawn")     # the parent may hold JAX's threads
    with concurrent.futures.ProcessPoolExecutor(o["workers"], mp_context=context) as pool:
      list(pool.map(convert_unit, todo))
  else:
    for job in todo:
      convert_unit(job)
  return publish(jobs, o, tfds_name, staging, destination)


def publish(jobs, o, tfds_name: str, staging: str, destination: str) -> dict:
  """Every unit's non-empty shards, then the metadata; the staging directory goes."""
  counts = [json.load(open(os.path.join(staging, f"unit-{j[2]:06d}.json"), encoding="utf-8"))
            for j in jobs]
  corrupt: dict[str, int] = {}
  for c in counts:
    for reason, n in c["corrupt"].items():
      corrupt[reason] = corrupt.get(reason, 0) + n
  shards = {}
  for split in SPLITS:
    shards[split] = [(os.path.join(staging, f"{split}-{j[2]:06d}.array_record"),
                      c["examples"][split]) for j, c in zip(jobs, counts)
                     if c["examples"].get(split, 0) > 0]
    if not shards[split]:
      raise ValueError(f"source {o[split] or o['train']!r} gave no {split} examples "
                       f"(corrupt: {corrupt or 'none'}); give `validation` inputs or raise "
                       "validation_fraction")
  write_dataset(destination, tfds_name, FORMATS[o["format"]][1], shards,
                f"converted by mmpretrain prepare ({o['format']})",
                os.path.join(staging, "metadata"))
  storage.rmtree(staging)
  return {"path": destination, "corrupt": corrupt,
          "examples": {split: sum(n for _, n in s) for split, s in shards.items()}}


def write_dataset(destination: str, tfds_name: str, features: dict, shards: dict,
                  description: str, metadata: str) -> None:
  """Local array_record files {split: [(path, examples)]} -> the TFDS dataset at
  `destination` (`<data_dir>/<name>/<version>`) through storage: the shards under their
  TFDS names, features.json, then dataset_info.json (whose presence marks it complete).
  `metadata`: a local directory for the metadata files."""
  os.makedirs(metadata, exist_ok=True)
  storage.makedirs(destination)
  split_infos = []
  for split, files in shards.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=metadata, template=TEMPLATE, dataset_name=tfds_name,
        filetype_suffix="array_record", split=split)
    for shard, (path, _) in enumerate(files):
      name = os.path.basename(template.sharded_filepath(shard_index=shard,
                                                        num_shards=len(files)))
      if storage.is_local(destination):
        os.replace(path, os.path.join(destination, name))
      else:
        with open(path, "rb") as f:
          storage.write_bytes(storage.join(destination, name), f.read())
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[n for _, n in files],
                                           num_bytes=0, filename_template=template))
  info = tfds.core.DatasetInfo(
      builder=tfds.core.DatasetIdentity(name=tfds_name, version=tfds.core.Version(VERSION),
                                        data_dir=metadata, module_name=""),
      features=tfds.features.FeaturesDict(features), description=description)
  info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD)
  info.set_splits(tfds.core.SplitDict(split_infos))
  info.write_to_directory(metadata)
  for name in sorted(os.listdir(metadata), key=lambda n: n == "dataset_info.json"):
    with open(os.path.join(metadata, name), "rb") as f:
      storage.write_bytes(storage.join(destination, name), f.read())
