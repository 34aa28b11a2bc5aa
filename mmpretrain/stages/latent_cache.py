"""`mmpretrain prepare` under visual.cached_latents: the frozen representation's latents of
every frame of the image and video datasets the config reads, computed once and written
beside them, one file per source shard (data/latent_cache.py names, lays out and reads
them).

It runs on every process of a multi-host job. Process 0 builds the datasets and the
tokenizer while the others wait; then the source shards whose cache file is missing (as
process 0 sees them) are split between the processes, balanced by record count, and each
process encodes its shards on its local devices, data-parallel, and writes each file
under a temporary name before publishing it whole, so a killed run leaves no half file
and a re-run encodes only what is missing.

Record j of a cache file holds the latents of record j's frames, so streams pick frames
exactly as they would from pixels. A record whose frames cannot be read keeps an empty
entry; the stream then meets the pixels and skips the record as before.
"""
import collections
import os
import tempfile
import time

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmpretrain import storage
from mmpretrain.data import latent_cache, pipeline, records, streams
from mmpretrain.data.convert import Runner
from mmpretrain.data.prepare import datasets_in_use, prepare
from mmpretrain.tokenizers.visual import make_representation

FRAMES_PER_DEVICE = 128     # frames a device encodes per call (one compiled shape)
DECODE_THREADS = 16         # threads reading and decoding source records ahead
PROGRESS_SECONDS = 60.0     # a progress line at least this often inside a long shard
SPLITS = ("train", "validation")
# Groups of one record, so a reader reads only the record it asks for; zstd at level 1
# shrinks bf16 latents as much as the writer's default level 3, and faster
# (docs/benchmarks.md).
WRITER_OPTIONS = "group_size:1,zstd:1"


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


def encode_step(representation, mesh: Mesh):
  """representation.encode(params, uint8 frames [N, H, W, C]) jitted with the frames' batch
  axis split over `mesh`'s one axis and the parameters replicated (also compiled ahead of
  time for a TPU slice: train/aot.latent_cache_report)."""
  frames = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  return jax.jit(representation.encode,
                 in_shardings=(NamedSharding(mesh, PartitionSpec()), frames),
                 out_shardings=frames)


class FrameEncoder:
  """uint8 frames -> latents in the cache dtype on this process's devices: calls of
  FRAMES_PER_DEVICE frames a device (padded), dispatched ahead of reading their results
  so the devices work while the host decodes the next frames. A shard's frames fill the
  devices FRAMES_PER_DEVICE at a time from its first, so every frame is encoded in the
  same device batch whatever the number of devices or processes, and the files do not
  depend on the shape of the job."""

  def __init__(self, config, devices=None):
    devices = list(devices or jax.local_devices())
    self.mesh = Mesh(np.array(devices), ("frames",))
    self.batch = FRAMES_PER_DEVICE * len(devices)
    representation = make_representation(config)
    self.params = jax.device_put(representation.load_params(),
                                 NamedSharding(self.mesh, PartitionSpec()))
    self.encode = encode_step(representation, self.mesh)
    self.frames = NamedSharding(self.mesh, PartitionSpec("frames"))
    self.dtype = latent_cache.DTYPES[config.visual.latent_cache_dtype]
    self.calls = 0

  def start(self, frames: list[np.ndarray]):
    """Dispatches up to `batch` frames; returns (device result, count)."""
    chunk = np.stack(frames)
    padded = np.zeros((self.batch, *chunk.shape[1:]), chunk.dtype)
    padded[:len(chunk)] = chunk
    self.calls += 1
    return self.encode(self.params, jax.device_put(padded, self.frames)), len(chunk)

  def finish(self, started) -> np.ndarray:
    out, count = started
    return np.asarray(out)[:count].astype(self.dtype)


def encoded_entries(frame_lists, encoder: FrameEncoder, dtype: str):
  """Cache entries (bytes) of records given as their lists of frames, in order: frames are
  encoded `encoder.batch` at a time across record boundaries, one call in flight."""
  waiting = collections.deque()          # frame counts of records not yet written
  queued, done = [], collections.deque()  # frames to dispatch; encoded frames
  in_flight = collections.deque()

  def ready():
    while waiting and len(done) >= waiting[0]:
      n = waiting.popleft()
      grids = [done.popleft() for _ in range(n)]
      yield latent_cache.encode_entry(np.stack(grids) if grids else np.zeros((0,)), dtype)

  def collect(keep: int):
    while len(in_flight) > keep:
      done.extend(encoder.finish(in_flight.popleft()))

  for frames in frame_lists:
    waiting.append(len(frames))
    queued.extend(frames)
    while len(queued) >= encoder.batch:
      in_flight.append(encoder.start(queued[:encoder.batch]))
      del queued[:encoder.batch]
      collect(keep=1)
      yield from ready()
    yield from ready()
  if queued:
    in_flight.append(encoder.start(queued))
  collect(keep=0)
  yield from ready()


def all_shards(config) -> list[latent_cache.CacheShard]:
  """The source shards of every split of every image or video dataset the config reads."""
  return [shard for name in datasets_in_use(config) if latent_cache.visual_fields(config, name)
          for split in SPLITS for shard in latent_cache.cache_shards(config, name, split)]


def assign(shards: list, processes: int) -> list[list]:
  """Shards split between `processes`, balanced by record count: largest first, each to
  the least-loaded process (the lowest index on ties); each keeps the original order.
  Deterministic, so every process computes the same split."""
  load, owner = [0] * processes, {}
  for i in sorted(range(len(shards)), key=lambda i: (-shards[i].records, i)):
    p = min(range(processes), key=lambda p: (load[p], p))
    load[p] += shards[i].records
    owner[i] = p
  return [[s for i, s in enumerate(shards) if owner[i] == p] for p in range(processes)]


def to_encode(shards: list, rebuild: bool) -> list:
  """The shards without a cache file (all with `rebuild`), as process 0 sees them: every
  process must split the same list."""
  todo = np.array([rebuild or not storage.exists(s.path) for s in shards], np.int32)
  if jax.process_count() > 1:
    todo = np.asarray(multihost_utils.broadcast_one_to_all(todo))
  return [s for s, t in zip(shards, todo) if t]


def publish(local: str, destination: str) -> None:
  """A finished local file to its final name: renamed (local), or uploaded whole (an
  object store shows an object only once it is complete)."""
  if storage.is_local(destination):
    os.replace(local, destination)
  else:
    storage.upload(local, destination)
    os.remove(local)


def write_shard(config, shard, encoder: FrameEncoder) -> int:
  """Encodes one source shard into its cache file; returns the frames encoded."""
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter
  keys = latent_cache.visual_fields(config, shard.dataset)
  dtype = config.visual.latent_cache_dtype
  source = pipeline.dataset_records(config, shard.dataset, shard.split)
  frame_lists = (source[shard.start:shard.start + shard.records]
                 .map(lambda record: record_frames(record, keys, config))
                 .to_iter_dataset(grain.ReadOptions(num_threads=DECODE_THREADS,
                                                    prefetch_buffer_size=4 * DECODE_THREADS)))
  if storage.is_local(shard.path):
    storage.makedirs(storage.parent(shard.path))
    local = f"{shard.path}.incomplete-{jax.process_index()}"
  else:
    handle, local = tempfile.mkstemp(prefix="mmpretrain-latents-", suffix=".array_record")
    os.close(handle)                       # the writer opens it by name
  writer = ArrayRecordWriter(local, WRITER_OPTIONS)
  frames, written, start, last = [0], 0, time.perf_counter(), [time.perf_counter()]

  def counted(lists):
    for fs in lists:
      frames[0] += len(fs)
      if time.perf_counter() - last[0] > PROGRESS_SECONDS:
        last[0] = time.perf_counter()
        print(f"{_who()}  {shard.dataset} {shard.tfds_split} shard {shard.index}: {frames[0]:,} "
              f"frames, {frames[0] / (last[0] - start):,.1f} frames/s", flush=True)
      yield fs
  for entry in encoded_entries(counted(frame_lists), encoder, dtype):
    writer.write(entry)
    written += 1
  writer.close()
  if written != shard.records:
    raise RuntimeError(f"{shard.path}: encoded {written} records of {shard.records}")
  publish(local, shard.path)
  return frames[0]


def remove_leftovers(shards) -> None:
  """Temporary files a killed run left in local cache directories (once every process is
  done, none is being written)."""
  for directory in {storage.parent(s.path) for s in shards}:
    if storage.is_local(directory) and os.path.isdir(directory):
      for name in os.listdir(directory):
        if ".array_record.incomplete-" in name:
          os.remove(os.path.join(directory, name))


def _who() -> str:
  return f"latents [process {jax.process_index()}/{jax.process_count()}]"


def sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def build_latent_caches(config, rebuild: bool = False, devices=None) -> dict:
  """Writes this process's share of the missing cache files of every image or video
  dataset the config reads (every one with `rebuild`), on `devices` (default: the local
  ones); returns {'caches': directories, 'shards', 'encoded' (paths this process wrote),
  'frames', 'seconds', 'process'}. Every process of the job must call it."""
  shards = all_shards(config)
  todo = to_encode(shards, rebuild)
  mine = assign(todo, jax.process_count())[jax.process_index()]
  encoder = FrameEncoder(config, devices) if mine else None
  start, frames, encoded = time.perf_counter(), 0, []
  print(f"{_who()}: {len(shards)} source shards, {len(shards) - len(todo)} cached, "
        f"{len(mine)} of the {len(todo)} missing to encode here on "
        f"{len(devices or jax.local_devices())} devices", flush=True)
  for done, shard in enumerate(mine, 1):
    shard_start = time.perf_counter()
    n = write_shard(config, shard, encoder)
    frames += n
    encoded.append(shard.path)
    seconds = time.perf_counter() - shard_start
    print(f"{_who()}: {shard.dataset} {shard.tfds_split} shard {shard.index} "
          f"({shard.records:,} records, {n:,} frames) in {seconds:.1f} s, "
          f"{n / seconds:,.1f} frames/s; {done}/{len(mine)}", flush=True)
  seconds = time.perf_counter() - start
  sync("latent caches written")
  if jax.process_index() == 0:
    remove_leftovers(shards)
  return {"caches": sorted({storage.parent(s.path) for s in shards}), "shards": len(shards),
          "encoded": encoded, "frames": frames, "seconds": seconds,
          "process": jax.process_index()}


def prepare_with_latents(config, datasets=None, rebuild: bool = False,
                         runner: Runner = Runner()) -> dict:
  """`mmpretrain prepare` on every process of a job: process 0 writes the datasets (those
  with a `source` by a Beam pipeline on `runner`) and the tokenizer while the others wait,
  then all of them write the latent caches."""
  if jax.process_index() == 0:
    prepare(config, datasets, rebuild, runner)
  sync("datasets prepared")
  return build_latent_caches(config, rebuild)
