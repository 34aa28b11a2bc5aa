"""Frozen-encoder cost: encoder throughput, and its share of the unified model's train step.

  python benchmarks/encoder.py --config=configs/demo.py [--steps=5 --warmup=2]

Builds an RAE from the config's encoder and decoder shapes (random weights: the cost does
not depend on them), then in one process measures (medians of jitted, block-until-ready
calls): the encoder alone on the demo's frames (images/s) and at a DINOv2-B/14 shape
(224², 12 × 768; images/s), the RAE-latent train step of the config, the same step on
pixels, and the frames' encoding alone with the step's frames. Prints one JSON line with
encoder_fraction_of_step = encode time ÷ RAE step time, and rae_over_pixels_step.
"""
import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from mmpretrain.config import load_config, validate
from mmpretrain.data.synthetic import interleaved_batch
from mmpretrain.encoders.vit import ViTConfig, VisionTransformer
from mmpretrain.hostalloc import relaunch_with_jemalloc
from mmpretrain.stages.encoder import image_tower_config
from mmpretrain.tokenizers import rae as rae_lib
from mmpretrain.run import Run
from mmpretrain.train.step import Trainer
import smoke  # pylint: disable=wrong-import-order

DINOV2_BASE = ViTConfig(image_size=224, patch_size=14, width=768, depth=12, num_heads=12,
                        mlp_dim=3072, activation="gelu", layer_scale=1.0, cls_token=True,
                        num_registers=4, interpolation="bicubic_antialias")


def median_seconds(fn, steps: int, warmup: int) -> float:
  for _ in range(1 + warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def encoder_images_per_s(cfg: ViTConfig, batch: int, steps: int, warmup: int) -> float:
  encoder = VisionTransformer(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(encoder)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)["tokens"])
  images = jnp.zeros((batch, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
  return batch / median_seconds(lambda: forward(state, images), steps, warmup)


def step_seconds(config, steps: int, warmup: int) -> tuple[float, Trainer, dict]:
  trainer = Trainer(Run(config), np.ones(config.model.vocab_size, np.float32))
  bench = config.bench if "bench" in config else {   # a quarter text, images filling the rest
      "text_tokens_per_row": config.data.seq_len // 4,
      "images_per_row": max(1, config.data.max_frames - 1)}
  batch = jax.device_put(interleaved_batch(trainer.run.spec, config.data.batch_size,
                                           bench["text_tokens_per_row"], bench["images_per_row"],
                                           config.model.vocab_size))
  state = [trainer.init_state(0)]

  def step():
    state[0], metrics = trainer.step(state[0], batch)
    return metrics
  return median_seconds(step, steps, warmup), trainer, batch


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=5, help="timed calls (median)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  smoke.add_flag(parser)
  args = parser.parse_args()
  config = validate(load_config(args.config))
  dinov2 = DINOV2_BASE
  if args.smoke:
    config, args.steps, args.warmup = smoke.tiny(config), 1, 0
    dinov2 = dataclasses.replace(DINOV2_BASE, image_size=28, width=32, depth=1, num_heads=2,
                                 mlp_dim=64)
  encoder_cfg = image_tower_config(config)

  with tempfile.TemporaryDirectory() as directory:
    rae = rae_lib.RAE(VisionTransformer(encoder_cfg, rngs=nnx.Rngs(0)),
                      rae_lib.decoder_config(config, encoder_cfg), rngs=nnx.Rngs(1))
    rae_lib.save_rae(directory, rae)
    rae_config = copy.deepcopy(config)
    rae_config.visual.representation, rae_config.visual.checkpoint = "rae", directory
    rae_config.visual.patch_size = 1
    rae_step, trainer, batch = step_seconds(rae_config, args.steps, args.warmup)
    encode = jax.jit(trainer.run.representation.encode)
    encode_s = median_seconds(lambda: encode(trainer.run.frozen, batch["frames"]), args.steps,
                              args.warmup)
  pixel_config = copy.deepcopy(config)
  pixel_config.visual.representation, pixel_config.visual.checkpoint = "pixels", ""
  pixel_config.visual.patch_size = 4
  pixel_step, _, _ = step_seconds(pixel_config, args.steps, args.warmup)
  frames = int(np.prod(batch["frames"].shape[:2]))
  print(json.dumps({
      "config": args.config, "backend": jax.default_backend(),
      "demo_encoder_images_per_s": encoder_images_per_s(encoder_cfg, 64, args.steps, args.warmup),
      "dinov2_base_224_images_per_s": encoder_images_per_s(dinov2, 8, args.steps,
                                                           args.warmup),
      "frames_per_step": frames, "rae_step_s": rae_step, "pixels_step_s": pixel_step,
      "encode_frames_s": encode_s, "encoder_fraction_of_step": encode_s / rae_step,
      "rae_over_pixels_step": rae_step / pixel_step}))


if __name__ == "__main__":
  main()
