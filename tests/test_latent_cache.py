"""Cached representation latents (visual.cached_latents): `prepare` encodes every frame
once; training on the cache equals training with the live encoder. The cache is one file
per source shard, keyed by where the shard came from, written by every process of a job:
two processes write the bytes one does, a re-run encodes only missing shards, new source
shards add files, and a missing one is refused by name."""
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from conftest import all_streams_config, config_file, tiny_config, xla_flags
from test_multihost import free_port
from mmpretrain.batch import DEVICE_FIELDS
from mmpretrain.data import latent_cache, pipeline, streams
from mmpretrain.data.pipeline import make_batches, tokenizer_path
from mmpretrain.data.prepare import NotReady, check_prepared
from mmpretrain.encoders.vit import VisionTransformer
from mmpretrain.image_files import png_bytes
from mmpretrain.run import Run
from mmpretrain.stages.encoder import image_tower_config
from mmpretrain.stages.latent_cache import assign, build_latent_caches
from mmpretrain.tokenizers.rae import RAE, decoder_config, save_rae
from mmpretrain.tokenizers.visual import make_representation
from mmpretrain.train.step import Trainer

STEPS = 3


def cached(config, dtype: str):
  c = config.copy_and_resolve_references()
  c.visual.cached_latents, c.visual.latent_cache_dtype = True, dtype
  return c


def used_frames(batch, tokens_per_frame: int):
  """(row, frame) of every frame a row's slots use (the rest of `frames` is padding)."""
  slot = batch["frame_slot"]
  return [(row, f) for row in range(len(slot))
          for f in np.unique(slot[row][slot[row] >= 0] // tokens_per_frame)]


def batches_and_params(config, tokenizer):
  """(3 batches, state after 3 steps, the step metrics) of `config`."""
  run = Run(config)
  trainer = Trainer(run, tokenizer.byte_lengths())
  batches = make_batches(config, tokenizer, run.data_spec)
  state, seen, metrics = trainer.init_state(0), [], []
  for _ in range(STEPS):
    batch = {k: v for k, v in next(batches).items() if k in DEVICE_FIELDS}
    seen.append(batch)
    state, m = trainer.step(state, batch)
    metrics.append(jax.device_get(m))
  return run, seen, state, metrics


def assert_cached_training_equals_live(config, tokenizer, rtol: float, frame_atol=1e-6):
  """Same documents, the cache's frames equal the live encoder's latents, and training
  on float32 latents gives the live run's losses and parameters (to `rtol`)."""
  live_run, live_batches, live_state, live_metrics = batches_and_params(config, tokenizer)
  cache_config = cached(config, "float32")
  with pytest.raises(NotReady, match="cached_latents"):
    check_prepared(cache_config)
  build_latent_caches(cache_config)
  assert check_prepared(cache_config)
  run, batches, state, metrics = batches_and_params(cache_config, tokenizer)
  encode = jax.jit(live_run.representation.encode)
  for live, got in zip(live_batches, batches):
    for key in DEVICE_FIELDS:
      if key != "frames":
        np.testing.assert_array_equal(got[key], live[key], err_msg=key)
    assert got["frames"].dtype == np.float32
    assert got["frames"].shape[2:] == tuple(live_run.representation.latent_grid)
    assert live["frame_slot"].max() >= 0                    # the batch holds frames
    want = np.asarray(encode(live_run.frozen, jnp.asarray(live["frames"])))
    for row, f in used_frames(live, run.spec.tokens_per_frame):
      np.testing.assert_allclose(got["frames"][row, f], want[row, f], rtol=1e-6,
                                 atol=frame_atol)
  for a, b in zip(live_metrics, metrics):
    for key in ("loss", "text_loss", "flow_loss"):
      assert float(b[key]) == pytest.approx(float(a[key]), rel=rtol), key
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6),
               jax.device_get(live_state.params), jax.device_get(state.params))


def test_four_streams_train_on_cached_pixels_as_on_live_ones(data_dir, tokenizer):
  config = all_streams_config(data_dir)
  config.data.batch_size = 4
  assert_cached_training_equals_live(config, tokenizer, rtol=1e-5)


@pytest.mark.slow              # ~30 s; make test-slow
def test_a_bfloat16_cache_is_close_and_a_changed_representation_has_its_own(data_dir, tokenizer):
  config = all_streams_config(data_dir)
  config.data.batch_size = 4
  bf16 = cached(config, "bfloat16")
  build_latent_caches(bf16)
  run = Run(bf16)
  batch = next(make_batches(bf16, tokenizer, run.data_spec))
  assert str(batch["frames"].dtype) == "bfloat16"
  live = next(make_batches(config, tokenizer, Run(config).data_spec))
  want = np.asarray(Run(config).representation.encode({}, jnp.asarray(live["frames"])))
  for row, f in used_frames(live, run.spec.tokens_per_frame):
    np.testing.assert_allclose(batch["frames"][row, f].astype(np.float32), want[row, f],
                               atol=1e-2)
  other = bf16.copy_and_resolve_references()
  other.data.image_size = 32
  names = {latent_cache.cache_name(c, "mnist_captions")
           for c in (bf16, cached(config, "float32"), other)}
  assert len(names) == 3


# --- The cache as a pod job: one file per source shard, every process encodes its share ---

SOURCE = "sharded_digits"              # a TFDS dataset of several shards, made by the tests
FEATURES = {"image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "caption": tfds.features.Text()}
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def write_source(directory: str, shards: dict, origins: dict | None = None) -> None:
  """A TFDS dataset (array_record) at `directory`/SOURCE/1.0.0 whose splits hold `shards`
  {split: [[record, ...] per shard]}; `origins` {split: [origin per shard]} go into its
  metadata.json as the converter writes them. Written anew over an older version."""
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter
  destination = os.path.join(directory, SOURCE, "1.0.0")
  shutil.rmtree(destination, ignore_errors=True)
  os.makedirs(destination)
  features = tfds.features.FeaturesDict(FEATURES)
  infos = []
  for split, split_shards in shards.items():
    template = tfds.core.ShardedFileTemplate(data_dir=destination, template=TEMPLATE,
                                             dataset_name=SOURCE,
                                             filetype_suffix="array_record", split=split)
    for index, shard in enumerate(split_shards):
      writer = ArrayRecordWriter(str(template.sharded_filepath(
          shard_index=index, num_shards=len(split_shards))), "group_size:1")
      for record in shard:
        writer.write(features.serialize_example(record))
      writer.close()
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(s) for s in split_shards],
                                     num_bytes=0, filename_template=template))
  info = tfds.core.DatasetInfo(
      builder=tfds.core.DatasetIdentity(name=SOURCE, version=tfds.core.Version("1.0.0"),
                                        data_dir=destination, module_name=""),
      features=features, description="test shards",
      metadata=tfds.core.MetadataDict({"shard_origins": origins}) if origins else None)
  info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD)
  info.set_splits(tfds.core.SplitDict(infos))
  info.write_to_directory(destination)


def digits(seed: int, n: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{"image": png_bytes(rng.integers(0, 256, (16, 16, 1), np.uint8)),
           "caption": f"a handwritten digit {DIGITS[i % 10]}"} for i in range(n)]


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# origin: (seed, records); b takes two encoder calls of 2 devices × FRAMES_PER_DEVICE
SHARDS = {"a": (0, 37), "b": (1, 300), "c": (2, 21), "v": (3, 13)}


def source_shards(train: str, validation: str = "v") -> tuple[dict, dict]:
  """(shards, origins) of a source whose splits hold the named shards of SHARDS."""
  shards = {"train": [digits(*SHARDS[o]) for o in train],
            "validation": [digits(*SHARDS[o]) for o in validation]}
  return shards, {"train": list(train), "validation": list(validation)}


def pod_config(root: str):
  """tiny_config caching a small random RAE's latents of SOURCE (in `root`/data, beside the
  session's tokenizer copied to `root`/tokenizer.model): module level, so that
  `mmpretrain prepare` subprocesses load it (conftest.config_file)."""
  c = tiny_config(os.path.join(root, "data"))
  c.data.tokenizer.path = os.path.join(root, "tokenizer.model")
  c.data.datasets[SOURCE] = {"tfds_name": SOURCE, "data_dir": "", "version": "",
                             "train_split": "train", "eval_split": "validation",
                             "fields": {"image": "image", "caption": "caption"}}
  c.data.streams.image_text.datasets = {"mnist_captions": 0.0, SOURCE: 1.0}
  c.data.mixture = {"text": 0.0, "image_text": 1.0}
  c.visual.representation, c.visual.checkpoint = "rae", os.path.join(root, "rae")
  c.visual.patch_size, c.visual.cached_latents = 1, True
  c.encoder.image = {"patch_size": 4, "width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
  c.rae.decoder = {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
  return c


@pytest.fixture
def pod_root(tmp_path, data_dir):
  """A directory with a 3+1-shard SOURCE, a random-init RAE and the session's tokenizer."""
  root = str(tmp_path / "pod")
  os.makedirs(root)
  shutil.copy(tokenizer_path(tiny_config(data_dir)), os.path.join(root, "tokenizer.model"))
  write_source(os.path.join(root, "data"), *source_shards("abc"))
  save_random_rae(pod_config(root))
  return root


def save_random_rae(config) -> None:
  """A random-init RAE of the config's encoder and decoder shapes at visual.checkpoint."""
  encoder_cfg = image_tower_config(config)
  save_rae(config.visual.checkpoint, RAE(VisionTransformer(encoder_cfg, rngs=nnx.Rngs(0)),
                                         decoder_config(config, encoder_cfg), rngs=nnx.Rngs(1)))


def cache_files(config) -> dict[str, tuple[bytes, int]]:
  """{file name: (bytes, mtime_ns)} of SOURCE's cache directory."""
  directory = os.path.join(config.data.data_dir, latent_cache.cache_name(config, SOURCE))
  return {name: (open(os.path.join(directory, name), "rb").read(),
                 os.stat(os.path.join(directory, name)).st_mtime_ns)
          for name in sorted(os.listdir(directory))}


def assert_cache_matches_the_encoder(config, split: str = "train") -> None:
  """Record i of the split read with the cache holds the live encoder's latents of record
  i's image (bfloat16 rounding)."""
  representation = make_representation(config)
  params = representation.load_params()
  plain = pipeline.dataset_records(config, SOURCE, split)
  cached = pipeline.dataset_records(config, SOURCE, split, cached_latents=True)
  assert len(plain) == len(cached)
  for i in range(0, len(plain), 7):
    frame = streams.decode_frame(plain[i]["image"], 16, 1)
    want = np.asarray(representation.encode(params, frame[None]))[0]
    got = cached[i]["image"]
    assert got.dtype == ml_dtypes.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)


def test_shards_are_split_between_processes_by_record_count():
  shards = [SimpleNamespace(records=n) for n in (50, 10, 40, 30, 20, 30)]
  parts = assign(shards, 2)
  assert [sum(s.records for s in p) for p in parts] == [90, 90]
  assert sorted(map(id, parts[0] + parts[1])) == sorted(map(id, shards))
  assert parts == assign(shards, 2)                       # every process computes the same
  assert [len(p) for p in assign(shards, 8)] == [1, 1, 1, 1, 1, 1, 0, 0]


def test_one_cache_file_per_source_shard_keyed_by_its_origin(pod_root):
  config = pod_config(pod_root)
  result = build_latent_caches(config)
  files = cache_files(config)
  keys = {o: latent_cache.shard_key(o, SHARDS[o][1]) for o in "abcv"}
  assert sorted(files) == sorted([f"train-{keys[o]}.array_record" for o in "abc"]
                                 + [f"validation-{keys['v']}.array_record"])
  assert len(result["encoded"]) == 4 and result["frames"] == 37 + 300 + 21 + 13
  assert_cache_matches_the_encoder(config)
  assert_cache_matches_the_encoder(config, "validation")
  assert check_prepared(config)
  # Without the converter's origins a shard is keyed by its file name.
  os.remove(os.path.join(config.data.data_dir, SOURCE, "1.0.0", "metadata.json"))
  [first, *_] = latent_cache.cache_shards(config, SOURCE, "train")
  assert first.key == latent_cache.shard_key(
      f"{SOURCE}-train.array_record-00000-of-00003", 37)


def test_a_rerun_encodes_only_the_missing_shard(pod_root):
  config = pod_config(pod_root)
  build_latent_caches(config)
  before = cache_files(config)
  gone = sorted(before)[1]
  directory = os.path.join(config.data.data_dir, latent_cache.cache_name(config, SOURCE))
  os.remove(os.path.join(directory, gone))
  with open(os.path.join(directory, gone + ".incomplete-0"), "wb") as f:
    f.write(b"half a shard")                             # what a killed run leaves
  result = build_latent_caches(config)
  assert [os.path.basename(p) for p in result["encoded"]] == [gone]
  after = cache_files(config)
  assert sorted(after) == sorted(before)                 # the leftover is gone too
  for name, (data, mtime) in after.items():
    assert data == before[name][0], name
    assert (mtime == before[name][1]) == (name != gone), name
  assert build_latent_caches(config)["encoded"] == []


def test_adding_a_source_shard_adds_a_cache_file_and_keeps_the_others(pod_root):
  config = pod_config(pod_root)
  write_source(config.data.data_dir, *source_shards("ab"))
  build_latent_caches(config)
  before = cache_files(config)
  # A new input lands between the others: every TFDS shard file is renamed (…-of-00003)
  # and the records after it move, but the origins still name the old shards.
  write_source(config.data.data_dir, *source_shards("acb"))
  [new] = build_latent_caches(config)["encoded"]
  assert os.path.basename(new) == f"train-{latent_cache.shard_key('c', 21)}.array_record"
  after = cache_files(config)
  assert set(after) == set(before) | {os.path.basename(new)}
  assert all(after[name] == before[name] for name in before)
  assert_cache_matches_the_encoder(config)


def test_a_missing_cache_shard_is_refused_naming_the_prepare_command(pod_root):
  config = pod_config(pod_root)
  build_latent_caches(config)
  [shard, *_] = latent_cache.cache_shards(config, SOURCE, "train")
  os.remove(shard.path)
  with pytest.raises(latent_cache.CacheNotPrepared) as error:
    pipeline.dataset_records(config, SOURCE, "train", cached_latents=True)
  message = str(error.value)
  assert "\n" not in message and shard.path in message
  assert "1 of 3 train shards missing" in message and "mmpretrain prepare" in message
  with pytest.raises(NotReady, match="1 of 3 train shards missing"):
    check_prepared(config)


def prepare_processes(config_path: str, processes: int, devices: int) -> list[str]:
  """`mmpretrain prepare` as `processes` local processes of one job (CPU, gloo), as a pod's
  hosts run it; their outputs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(devices))
  address = f"localhost:{free_port()}"
  running = [subprocess.Popen(
      [sys.executable, "-m", "mmpretrain.cli", "prepare", f"--config={config_path}",
       f"--coordinator_address={address}", f"--num_processes={processes}",
       f"--process_id={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(processes)]
  outputs = [p.communicate(timeout=600)[0] for p in running]
  for p, output in zip(running, outputs):
    assert p.returncode == 0, output[-3000:]
  return outputs


def test_two_processes_write_the_cache_one_process_writes(pod_root, tmp_path):
  config = pod_config(pod_root)
  build_latent_caches(config)                # this process alone, on its 8 devices
  want = {name: data for name, (data, _) in cache_files(config).items()}
  shutil.rmtree(os.path.join(config.data.data_dir, latent_cache.cache_name(config, SOURCE)))
  outputs = prepare_processes(config_file(tmp_path, pod_config, pod_root), 2, 2)
  got = {name: data for name, (data, _) in cache_files(config).items()}
  assert got == want
  # Each process encoded its share (largest first to the least loaded): 300 records, and
  # 37 + 21 + 13.
  for i, shards in enumerate([("train shard 1",),
                              ("train shard 0", "train shard 2", "validation shard 0")]):
    assert (f"latents [process {i}/2]: 4 source shards, 0 cached, {len(shards)} of the 4 "
            "missing") in outputs[i]
    assert all(f"{SOURCE} {shard} (" in outputs[i] for shard in shards), outputs[i]
  assert "latents ready" in outputs[0] and "latents ready" not in outputs[1]
