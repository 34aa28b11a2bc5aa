"""`mmpretrain prepare` under visual.cached_latents: the frozen representation's latents of
every frame of the image and video datasets the config reads, computed once and written
as TFDS datasets beside them (data/latent_cache.py names and reads them).

Record i of a cache split holds the latents of record i's frames, so streams pick frames
exactly as they would from pixels. A record whose frames cannot be read keeps an empty
entry; the stream then meets the pixels and skips the record as before.
"""
import os
import tempfile

import jax
import numpy as np
import tensorflow_datasets as tfds

from mmpretrain import storage
from mmpretrain.data import latent_cache, pipeline, records, streams
from mmpretrain.data.convert import VERSION
from mmpretrain.data.convert.publish import write_dataset
from mmpretrain.data.convert.shards import array_record_writer
from mmpretrain.data.prepare import datasets_in_use
from mmpretrain.tokenizers.visual import make_representation

ENCODE_BATCH = 64          # frames per encoder call (one compiled shape)


def record_frames(record, keys, config) -> list[np.ndarray]:
  """uint8 frames of a record's first frame field, as the streams decode them; [] when the
  record or a frame cannot be read."""
  if isinstance(record, records.Unreadable):
    return []
  value = next((record[k] for k in keys if k in record), None)
  if value is None:
    return []
  values = value if latent_cache.frame_list(value) else [value]
  try:
    return [streams.decode_frame(v, config.data.image_size, config.data.image_channels)
            for v in values]
  except streams.BadRecord:
    return []


class FrameEncoder:
  """uint8 frames [N, H, W, C] -> latents [N, h, w, c] in the cache dtype, in padded
  batches of ENCODE_BATCH (one compilation)."""

  def __init__(self, config):
    self.representation = make_representation(config)
    self.params = self.representation.load_params()
    self.encode = jax.jit(self.representation.encode)
    self.dtype = latent_cache.DTYPES[config.visual.latent_cache_dtype]
    self.grid = tuple(self.representation.latent_grid)

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(frames), ENCODE_BATCH):
      chunk = frames[start:start + ENCODE_BATCH]
      padded = np.concatenate([chunk, np.zeros((ENCODE_BATCH - len(chunk), *chunk.shape[1:]),
                                               chunk.dtype)])
      out.append(np.asarray(self.encode(self.params, padded))[:len(chunk)].astype(self.dtype))
    return np.concatenate(out) if out else np.zeros((0, *self.grid), self.dtype)


def encoded_records(dataset, keys, config, encoder: FrameEncoder):
  """Cache entries {latents: [bytes per frame], shape} of `dataset`'s records, in order."""
  pending = []

  def flush():
    frames = [f for fs in pending for f in fs]
    latents = encoder(np.stack(frames)) if frames else []
    start = 0
    for fs in pending:
      yield {"latents": [latents[start + k].tobytes() for k in range(len(fs))],
             "shape": np.asarray(encoder.grid, np.int32)}
      start += len(fs)
    pending.clear()

  for index in range(len(dataset)):
    pending.append(record_frames(dataset[index], keys, config))
    if sum(map(len, pending)) >= ENCODE_BATCH:
      yield from flush()
  yield from flush()


def build_latent_caches(config, rebuild: bool = False) -> list[str]:
  """Writes the cache of every image or video dataset the config reads (a no-op where it
  is there, unless `rebuild`); returns their paths."""
  features = tfds.features.FeaturesDict(latent_cache.FEATURES)
  encoder, paths = None, []
  for name in datasets_in_use(config):
    keys = latent_cache.visual_fields(config, name)
    if not keys:
      continue
    spec = config.data.datasets[name]
    cache = latent_cache.cache_name(config, spec.tfds_name)
    destination = storage.join(spec.data_dir or config.data.data_dir, cache, VERSION)
    paths.append(destination)
    if storage.exists(storage.join(destination, "dataset_info.json")) and not rebuild:
      continue
    encoder = encoder or FrameEncoder(config)
    staging = tempfile.mkdtemp(prefix="mmpretrain-latents-")
    shards = {}
    for split, tfds_split in (("train", spec.train_split), ("validation", spec.eval_split)):
      path = os.path.join(staging, f"{tfds_split}.array_record")
      writer = array_record_writer(path)
      count = 0
      for entry in encoded_records(pipeline.dataset_records(config, name, split), keys,
                                   config, encoder):
        writer.write(features.serialize_example(entry))
        count += 1
      writer.close()
      shards[tfds_split] = [(path, count)]
    write_dataset(destination, cache, latent_cache.FEATURES, shards,
                  f"latents of {spec.tfds_name} ({config.visual.representation})", {})
    storage.rmtree(staging)
  return paths
