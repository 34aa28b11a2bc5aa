"""End to end on real data: short CPU runs (dense and MoE) lower both losses and write outputs."""
import glob
import json
import os

import jax
import numpy as np
from flax import nnx
from PIL import Image

from mmpretrain.analysis.experts import load_routing
from mmpretrain.data.pipeline import make_batches
from mmpretrain.model.moe import RouterBias
from mmpretrain.train import objective
from mmpretrain.train.loop import train
from mmpretrain.train.step import Trainer


def test_thirty_steps_lower_text_and_flow_loss(config, tmp_path):
  summary = train(config, str(tmp_path))
  first, last = summary["first"], summary["last"]
  assert last["step"] == 29
  # From uniform (ln 512 = 6.24 nats) by more than half a nat in 30 steps.
  assert last["text_loss"] < first["text_loss"] - 0.5, (first["text_loss"], last["text_loss"])
  assert first["visual_tokens"] > 0 and last["visual_tokens"] > 0   # both steps saw images
  assert last["flow_loss"] < 0.8 * first["flow_loss"], (first["flow_loss"], last["flow_loss"])
  assert last["text_bits_per_byte"] < first["text_bits_per_byte"]
  # The run's artifacts: TensorBoard events, metrics log, loss plot, sample grid.
  assert glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  logged = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert {"text/loss", "visual/flow_loss", "text/bits_per_byte"} <= set(logged[0])
  assert os.path.exists(os.path.join(tmp_path, "plots", "losses.png"))
  grid = Image.open(summary["samples"])
  size = 2 * config.data.image_size                    # grid is upscaled 2×
  assert grid.size == (size * config.sample.images_per_caption, size * len(config.sample.captions))


def test_moe_run_trains_and_moves_router_bias_against_load(config, tokenizer, tmp_path):
  config.model.moe.update({"num_experts": 4, "router": "sigmoid", "bias_update_rate": 0.01,
                           "shared_experts": "per_modality"})
  summary = train(config, str(tmp_path))
  first, last = summary["first"], summary["last"]
  assert last["text_loss"] < first["text_loss"] - 0.5
  assert last["flow_loss"] < 0.8 * first["flow_loss"]
  assert {"moe_load_balance", "moe_router_z", "moe_drop_rate"} <= set(last)
  # Routing counts by token kind, one window per log step, every step counted once.
  counts, layers, steps = load_routing(str(tmp_path), windows=0)
  assert steps == [0, 5, 10, 15, 20, 25, 29] and list(layers) == [0, 1]
  per_layer = counts.sum(axis=(1, 2))
  assert per_layer[0] == per_layer[1] > 0          # each layer routes every token k times
  assert (counts.sum(axis=(0, 2)) > 0).all()       # text, understanding and generation seen

  trainer = Trainer(config, tokenizer.byte_lengths())
  batch = next(make_batches(config, tokenizer))
  batch = {k: v for k, v in batch.items() if not k.startswith("skipped_")}
  state = trainer.init_state(0)
  # The router load the step sees: the same noised inputs (the step's per-row keys).
  _, step_rng = jax.random.split(state.rng)
  row_rngs = jax.random.split(step_rng, config.data.batch_size)
  latents = objective.frame_latent_tokens(trainer.representation, trainer.frozen,
                                          batch["frames"], config.visual.patch_size)
  inputs, _ = objective.noised_inputs(batch, latents, row_rngs, config.diffusion,
                                      trainer.time_shift)
  load = np.asarray(trainer.model(state.params)(inputs)[2]["expert_load"])
  state, _ = trainer.step(state, batch)
  (bias,) = jax.tree.leaves(nnx.state(trainer.model(state.params), RouterBias))
  want = 0.01 * np.sign(load.mean(-1, keepdims=True) - load)
  np.testing.assert_allclose(np.asarray(bias).reshape(want.shape), want, atol=1e-7)
