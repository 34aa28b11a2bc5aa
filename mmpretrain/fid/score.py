"""FID of two image sets, each a folder of images or a .npz of statistics, with the FID
Inception (`mmpretrain fid`): pool3 features in fixed-size batches, jitted once per image
size, their rows split over this process's devices.
"""
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmpretrain import sharding, storage
from mmpretrain.fid.images import image_files, read_image
from mmpretrain.fid.inception import (FEATURES, WEIGHTS_FILE, FIDInceptionV3,
                                      load_inception)
from mmpretrain.fid.statistics import (frechet_distance, load_statistics, save_statistics,
                                       statistics)

BATCH_SIZE = 50                     # pytorch-fid's default


@jax.jit
def _features(graphdef, state, images):
  return nnx.merge(graphdef, state)(images)


class FeatureExtractor:
  """uint8 images [H, W, 3] (any sizes) -> pool3 features float32 [N, 2048]. Consecutive
  images of one size fill a batch of up to `batch_size` rows, padded when short, so one
  program serves every batch of a size; rows are split over `devices`."""

  def __init__(self, model: FIDInceptionV3, batch_size: int = BATCH_SIZE, devices=None):
    if batch_size < 1:
      raise ValueError(f"batch size {batch_size}: must be at least 1")
    devices = jax.local_devices() if devices is None else devices
    self.batch_size, self.ways = batch_size, len(devices)
    mesh = Mesh(np.asarray(devices), ("data",))
    self.rows = NamedSharding(mesh, PartitionSpec("data"))
    self.graphdef, state = nnx.split(model)
    self.state = jax.device_put(state, sharding.replicated(mesh))

  def _run(self, batch: list[np.ndarray], rows: int) -> np.ndarray:
    padded = np.zeros((rows, *batch[0].shape), np.uint8)
    padded[:len(batch)] = batch
    out = _features(self.graphdef, self.state, jax.device_put(padded, self.rows))
    return np.asarray(out)[:len(batch)]

  def __call__(self, images, count: int | None = None) -> np.ndarray:
    """Features of `images` (an iterable; `count` of them, if known, caps the batch as
    pytorch-fid caps it at the data size)."""
    size = min(self.batch_size, count or self.batch_size)
    rows = -(-size // self.ways) * self.ways      # each device holds as many rows
    features, batch = [], []
    for image in images:
      if batch and (len(batch) == size or image.shape != batch[0].shape):
        features.append(self._run(batch, rows))
        batch = []
      batch.append(np.asarray(image, np.uint8))
    if batch:
      features.append(self._run(batch, rows))
    return np.concatenate(features) if features else np.zeros((0, FEATURES), np.float32)


def is_statistics(path: str) -> bool:
  return str(path).endswith(".npz")


def _enough_images(folder: str) -> list[str]:
  files = image_files(folder)
  if len(files) < 2:
    raise ValueError(f"{folder}: {len(files)} image(s) with a known extension; FID needs "
                     "at least 2 (a covariance)")
  return files


def compare(real: str, fake: str | None, inception: str | None,
            batch_size: int = BATCH_SIZE, save_stats: str | None = None) -> dict:
  """{'fid', 'real_images', 'fake_images'} of two sets, each a folder or a .npz (its count
  None), and with `save_stats` the real folder's statistics written there, a new file
  ('stats'). Every input is checked before the Inception is loaded."""
  if save_stats and storage.exists(save_stats):
    raise ValueError(f"{save_stats} exists: delete it or name another file for --save_stats")
  if save_stats and is_statistics(real):
    raise ValueError(f"--real={real} is already statistics: --save_stats needs an image "
                     "folder")
  sets = {name: load_statistics(path) if is_statistics(path) else _enough_images(path)
          for name, path in (("real", real), ("fake", fake)) if path is not None}
  folders = {name: files for name, files in sets.items() if isinstance(files, list)}
  if folders and not inception:
    raise ValueError("--inception is required to read image folders: pytorch-fid's "
                     f"{WEIGHTS_FILE} (docs/fid.md)")
  extract = FeatureExtractor(load_inception(inception), batch_size) if folders else None
  result, stats = {}, {}
  for name, value in sets.items():
    if name in folders:
      stats[name] = statistics(extract((read_image(f) for f in value), len(value)))
      result[f"{name}_images"] = len(value)
    else:
      stats[name] = value
      result[f"{name}_images"] = None
  if save_stats:
    save_statistics(save_stats, *stats["real"])
    result["stats"] = save_stats
  if "fake" in stats:
    result = {"fid": frechet_distance(*stats["real"], *stats["fake"]), **result}
  return result
