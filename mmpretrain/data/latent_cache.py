"""Cached representation latents: with `config.visual.cached_latents`, every frame a stream
reads arrives as the frozen representation's latent grid instead of pixels, so training
never runs the encoder.

`mmpretrain prepare` writes, beside each image or video dataset the config reads, a TFDS
dataset `<tfds_name>_latents_<key>` (stages/latent_cache.py) holding, for record i of
each split, the latents of record i's frames (`config.visual.latent_cache_dtype`, raw
bytes, the grid in `shape`). The key hashes what the latents depend on (representation,
its checkpoint, frame size and channels, dtype), so a changed encoder never reads stale
latents. `with_cached_latents` swaps them into the records.
"""
import hashlib
import json

import grain
import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds

from mmpretrain.data import builders, records

VISUAL_FIELDS = ("image", "frames")          # canonical fields that hold frames
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
FEATURES = {"latents": tfds.features.Tensor(shape=(None,), dtype=np.object_),
            "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32)}


def cache_name(config, tfds_name: str) -> str:
  """The cache dataset of `tfds_name` for this config's representation and frames."""
  v, d = config.visual, config.data
  identity = json.dumps([v.representation, v.checkpoint, d.image_size, d.image_channels,
                         v.latent_cache_dtype])
  return f"{tfds_name}_latents_{hashlib.sha1(identity.encode()).hexdigest()[:10]}"


def visual_fields(config, name: str) -> list[str]:
  """The record keys of dataset `name` that hold frames (an image or a frame list)."""
  fields = config.data.datasets[name].fields
  return [fields[f] for f in VISUAL_FIELDS if f in fields]


def frame_list(value) -> bool:
  """Whether a record's frame field holds several frames (a list or array of them)."""
  return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0


def decode(entry: dict, dtype: str) -> list[np.ndarray]:
  """A cache record -> its frames' latent grids."""
  shape = tuple(int(n) for n in entry["shape"])
  return [np.frombuffer(b, DTYPES[dtype]).reshape(shape) for b in entry["latents"]]


def with_cached_latents(dataset: grain.MapDataset, config, name: str,
                        split: str) -> grain.MapDataset:
  """Records of `name` whose frame fields hold latent grids (float arrays) in place of
  image bytes; a record the cache does not match is refused by name."""
  spec = config.data.datasets[name]
  cache = cache_name(config, spec.tfds_name)
  data_dir = spec.data_dir or config.data.data_dir
  try:
    source = builders.open_split(cache, spec.train_split if split == "train" else
                                 spec.eval_split, data_dir)
  except builders.DatasetNotPrepared as e:
    raise builders.DatasetNotPrepared(
        f"{e}; with visual.cached_latents, `mmpretrain prepare` with the same config "
        "writes it") from e
  if len(source) != len(dataset):
    raise ValueError(f"latent cache {cache} has {len(source)} records, dataset {name!r} "
                     f"{len(dataset)}: re-run `mmpretrain prepare --rebuild` for it")
  keys = visual_fields(config, name)

  def swap(index, record):
    if isinstance(record, records.Unreadable):
      return record
    latents = decode(source[index], config.visual.latent_cache_dtype)
    record = dict(record)
    for key in keys:
      if key in record:
        record[key] = latents if frame_list(record[key]) else latents[0]
    return record
  return dataset.map_with_index(swap)
