"""Cached representation latents: with `config.visual.cached_latents`, every frame a stream
reads arrives as the frozen representation's latent grid instead of pixels, so training
never runs the encoder.

Layout. `mmpretrain prepare` (stages/latent_cache.py) writes, beside each image or video
dataset the config reads, a directory `<data_dir>/<tfds_name>_latents_<hash>` (`hash`:
what the latents depend on: representation, its checkpoint, frame size and channels,
dtype, so a changed encoder never reads stale latents) holding one array_record file per
SHARD of the source dataset: `<split>-<key>.array_record`, whose record j holds the
latents of record j of that source shard. The key names the source shard by where it
came from, so adding input data adds cache files and keeps the others:

- the source dataset's `metadata.json` has `{"shard_origins": {split: [origin, ...]}}`
  (the converter, data/convert, writes it: an origin names the input file or byte range
  a shard holds): key = sha1 of (origin, the shard's record count);
- otherwise: key = sha1 of (the shard's file name, its record count).

An entry (one source record) is a 20-byte header of five little-endian uint32 — frames,
h, w, c, dtype code (DTYPE_CODES) — and the frames' latents, row-major, in that dtype.
A record whose frames cannot be read has 0 frames; the stream then meets its pixels and
skips it as it would without the cache.

Reading (`with_cached_latents`): the split's cache files in source shard order, read by
grain's ArrayRecordDataSource, so record i of the split lines up with record i of the
dataset.
"""
import dataclasses
import hashlib
import json
import posixpath
import struct

import grain
import ml_dtypes
import numpy as np

from mmpretrain import storage
from mmpretrain.data import builders, records

VISUAL_FIELDS = ("image", "frames")          # canonical fields that hold frames
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
DTYPE_CODES = {"float32": 0, "bfloat16": 1}
HEADER = struct.Struct("<5I")
KEY_CHARS = 12                               # of the sha1 hex digest


def cache_name(config, tfds_name: str) -> str:
  """The cache directory of `tfds_name` for this config's representation and frames."""
  v, data = config.visual, config.data
  identity = json.dumps([v.representation, v.checkpoint, data.image_size, data.image_channels,
                         v.latent_cache_dtype])
  return f"{tfds_name}_latents_{hashlib.sha1(identity.encode()).hexdigest()[:10]}"


def visual_fields(config, name: str) -> list[str]:
  """The record keys of dataset `name` that hold frames (an image or a frame list)."""
  fields = config.data.datasets[name].fields
  return [fields[f] for f in VISUAL_FIELDS if f in fields]


def frame_list(value) -> bool:
  """Whether a record's frame field holds several frames (a list or array of them)."""
  return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0


def shard_key(name: str, records_in_shard: int) -> str:
  """A source shard's key: its origin (or file name) and record count, hashed."""
  return hashlib.sha1(json.dumps([name, records_in_shard]).encode()).hexdigest()[:KEY_CHARS]


@dataclasses.dataclass(frozen=True)
class CacheShard:
  """One source shard of a dataset's split and the cache file of its latents."""
  dataset: str          # the name in config.data.datasets
  split: str            # 'train' | 'validation' (pipeline.dataset_records' names)
  tfds_split: str
  index: int            # the shard's position in the split
  start: int            # its first record's index in the split
  records: int
  key: str
  path: str             # the cache file


def source_origins(source_dir: str, tfds_split: str, shards: int) -> list[str] | None:
  """The converter's `shard_origins` of a split, or None where the dataset has none."""
  path = storage.join(source_dir, "metadata.json")
  if not storage.exists(path):
    return None
  origins = storage.read_json(path).get("shard_origins", {}).get(tfds_split)
  if origins is not None and len(origins) != shards:
    raise ValueError(f"{path}: shard_origins[{tfds_split!r}] names {len(origins)} shards, "
                     f"the split has {shards}: convert the dataset again (--rebuild)")
  return origins


def cache_shards(config, name: str, split: str) -> list[CacheShard]:
  """Every non-empty source shard of dataset `name`'s split ('train' or 'validation'),
  in order, with its cache file."""
  spec = config.data.datasets[name]
  tfds_split = spec.train_split if split == "train" else spec.eval_split
  data_dir = spec.data_dir or config.data.data_dir
  files = builders.split_shards(spec.tfds_name, tfds_split, data_dir, spec.version)
  source_dir = builders.dataset_dir(spec.tfds_name, data_dir, spec.version)
  origins = source_origins(source_dir, tfds_split, len(files))
  directory = storage.join(data_dir, cache_name(config, spec.tfds_name))
  shards, start = [], 0
  for index, (path, n) in enumerate(files):
    if n:
      key = shard_key(origins[index] if origins else posixpath.basename(path), n)
      shards.append(CacheShard(name, split, tfds_split, index, start, n, key,
                               storage.join(directory, f"{tfds_split}-{key}.array_record")))
    start += n
  return shards


class CacheNotPrepared(builders.DatasetNotPrepared):
  """A cache file of a source shard is missing."""


def prepare_command(name: str) -> str:
  return (f"run `mmpretrain prepare --config=<your config>` with visual.cached_latents "
          f"(tpu_scripts/cache_latents.sh on a pod) to encode {name!r}")


def missing(shards: list[CacheShard]) -> list[CacheShard]:
  return [s for s in shards if not storage.exists(s.path)]


def check_cache(shards: list[CacheShard], name: str) -> None:
  """Raises CacheNotPrepared (one line) unless every shard's cache file is there."""
  absent = missing(shards)
  if absent:
    raise CacheNotPrepared(
        f"latent cache of {name!r}: {len(absent)} of {len(shards)} "
        f"{absent[0].tfds_split} shards missing (first: {absent[0].path}); "
        f"{prepare_command(name)}")


def encode_entry(latents: np.ndarray, dtype: str) -> bytes:
  """Latents [frames, h, w, c] (in the cache dtype) -> one cache record."""
  frames = latents.shape[0]
  h, w, c = latents.shape[1:] if frames else (0, 0, 0)
  return HEADER.pack(frames, h, w, c, DTYPE_CODES[dtype]) + latents.tobytes()


def decode_entry(data: bytes, dtype: str) -> list[np.ndarray]:
  """A cache record -> its frames' latent grids (read-only views of `data`)."""
  frames, h, w, c, code = HEADER.unpack_from(data)
  if code != DTYPE_CODES[dtype]:
    raise ValueError(f"a latent cache record holds dtype code {code}, the config reads "
                     f"{dtype} ({DTYPE_CODES[dtype]})")
  grids = np.frombuffer(data, DTYPES[dtype], frames * h * w * c, HEADER.size)
  return list(grids.reshape(frames, h, w, c))


def open_cache(config, name: str, split: str):
  """(random-access source of the split's cache records, the shards)."""
  shards = cache_shards(config, name, split)
  check_cache(shards, name)
  return grain.sources.ArrayRecordDataSource([s.path for s in shards]), shards


def with_cached_latents(dataset: grain.MapDataset, config, name: str,
                        split: str) -> grain.MapDataset:
  """Records of `name` whose frame fields hold latent grids (float arrays) in place of
  image bytes; a missing cache shard is refused by name."""
  source, _ = open_cache(config, name, split)
  if len(source) != len(dataset):
    raise ValueError(f"latent cache of {name!r} has {len(source)} {split} records, the "
                     f"dataset {len(dataset)}: {prepare_command(name)} (--rebuild)")
  keys = visual_fields(config, name)
  dtype = config.visual.latent_cache_dtype

  def swap(index, record):
    if isinstance(record, records.Unreadable):
      return record
    latents = decode_entry(source[index], dtype)
    if not latents:            # its frames could not be read: the stream skips the pixels
      return record
    record = dict(record)
    for key in keys:
      if key in record:
        record[key] = latents if frame_list(record[key]) else latents[0]
    return record
  return dataset.map_with_index(swap)
