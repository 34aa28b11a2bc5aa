"""Latent-cache throughput: frames a second that `mmpretrain prepare` reads, encodes and
writes under visual.cached_latents, on this machine's devices.

  python benchmarks/latent_cache.py --config=configs/demo.py [--repeats=2]

Builds mnist_captions (5,000 digits in two splits, one shard each) into a temporary data
dir and a random-init RAE of the config's encoder and decoder shapes with the demo RAE's
16 latent channels (the cost does not depend on the weights), then runs the cache stage
(stages/latent_cache.build_latent_caches) once to compile and `--repeats` more times on
a fresh cache directory. Prints one JSON line: frames/s of the whole stage (PNG decode,
encoder, array_record writes; the best repeat) and per device, the encoder step alone on
the same batches (frames/s), and their ratio.
"""
import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from mmpretrain.config import load_config, validate
from mmpretrain.data import builders, latent_cache
from mmpretrain.encoders.vit import VisionTransformer
from mmpretrain.hostalloc import relaunch_with_jemalloc
from mmpretrain.stages import latent_cache as stage
from mmpretrain.stages.encoder import image_tower_config
from mmpretrain.tokenizers import rae as rae_lib
from mmpretrain.tokenizers.visual import make_representation
import smoke  # pylint: disable=wrong-import-order

DATASET = "mnist_captions"
DEMO_LATENT_CHANNELS = 16        # configs/stages/rae_demo.py: rae.latent_channels


def cache_config(config, data_dir: str, rae_dir: str):
  """`config` caching the RAE in `rae_dir`'s latents of DATASET alone."""
  c = copy.deepcopy(config)
  c.data.data_dir = data_dir
  c.data.mixture = {"image_text": 1.0}
  c.data.streams.image_text.datasets = {DATASET: 1.0}
  c.visual.representation, c.visual.checkpoint = "rae", rae_dir
  c.visual.cached_latents = True
  return c


def encode_frames_per_s(config, repeats: int) -> float:
  """The jitted encode step alone, on batches of the stage's shape (median of calls)."""
  encoder = stage.FrameEncoder(config)
  data = config.data
  frame = np.zeros((data.image_size, data.image_size, data.image_channels), np.uint8)
  frames = [frame] * encoder.batch
  encoder.finish(encoder.start(frames))
  times = []
  for _ in range(max(5, repeats)):
    start = time.perf_counter()
    encoder.finish(encoder.start(frames))
    times.append(time.perf_counter() - start)
  return encoder.batch / float(np.median(times))


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--repeats", type=int, default=2, help="timed runs after the first")
  smoke.add_flag(parser)
  args = parser.parse_args()
  config = validate(load_config(args.config))
  if args.smoke:
    config, args.repeats = smoke.tiny(config), 1
  config.rae.latent_channels = DEMO_LATENT_CHANNELS
  # The stage's progress lines go to stderr: stdout is the one JSON line.
  with tempfile.TemporaryDirectory() as directory, contextlib.redirect_stdout(sys.stderr):
    data_dir, rae_dir = os.path.join(directory, "data"), os.path.join(directory, "rae")
    builders.prepare_dataset(DATASET, data_dir)
    config = cache_config(config, data_dir, rae_dir)
    encoder_cfg = image_tower_config(config)
    rae_lib.save_rae(rae_dir, rae_lib.RAE(VisionTransformer(encoder_cfg, rngs=nnx.Rngs(0)),
                                          rae_lib.decoder_config(config, encoder_cfg),
                                          rngs=nnx.Rngs(1)))
    cache = os.path.join(data_dir, latent_cache.cache_name(config, DATASET))
    runs = []
    for _ in range(1 + args.repeats):          # the first compiles
      shutil.rmtree(cache, ignore_errors=True)
      runs.append(stage.build_latent_caches(config))
    frames = runs[-1]["frames"]
    seconds = min(r["seconds"] for r in runs[1:])
    cache_bytes = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache))
    encode_rate = encode_frames_per_s(config, args.repeats)
    grid = list(make_representation(config).latent_grid)
  devices = len(jax.local_devices())
  rate = frames / seconds
  print(json.dumps({
      "config": args.config, "backend": jax.default_backend(), "devices": devices,
      "frames": frames, "frames_per_device_call": stage.FRAMES_PER_DEVICE,
      "latent_grid": grid,
      "latent_cache_frames_per_s": rate, "latent_cache_frames_per_s_per_device": rate / devices,
      "encode_frames_per_s": encode_rate, "stage_over_encode": rate / encode_rate,
      "cache_bytes_per_frame": cache_bytes / frames}))


if __name__ == "__main__":
  main()
