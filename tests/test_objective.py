"""The Transfusion loss against float64 numpy references, and exact gradient accumulation."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmpretrain import diffusion
from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.tokenizers.visual import frame_latent_tokens, place_frame_tokens
from mmpretrain.train import objective
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec

LOSS_CFG = ml_collections.ConfigDict({"text_weight": 1.0, "flow_weight": 3.0, "z_loss": 1e-2})


def tiny_batch(rng, B=2, L=7, V=11, D=3):
  modality = np.where(rng.random((B, L)) < 0.4, MODALITY_VISUAL, MODALITY_TEXT).astype(np.int8)
  return {
      "tokens": rng.integers(0, V, (B, L)).astype(np.int32),
      "modality": modality,
      "text_loss_mask": (rng.random((B, L)) < 0.7) & (modality == MODALITY_TEXT),
      "visual_loss_mask": (rng.random((B, L)) < 0.8) & (modality == MODALITY_VISUAL),
  }, rng.normal(size=(B, L, V)), rng.normal(size=(B, L, D)), rng.normal(size=(B, L, D))


def reference_loss(batch, logits, pred, target, byte_lengths):
  """Loops in float64: next-token CE, z-loss, flow MSE, bits per byte."""
  ce, z, n_text, nbytes, flow, n_vis = 0.0, 0.0, 0, 0.0, 0.0, 0
  B, L = batch["tokens"].shape
  for b in range(B):
    for i in range(L - 1):
      if batch["text_loss_mask"][b, i + 1]:
        row = logits[b, i].astype(np.float64)
        log_z = math.log(np.exp(row - row.max()).sum()) + row.max()
        ce += log_z - row[batch["tokens"][b, i + 1]]
        z += log_z ** 2
        n_text += 1
        nbytes += byte_lengths[batch["tokens"][b, i + 1]]
    for i in range(L):
      if batch["visual_loss_mask"][b, i]:
        flow += np.mean((pred[b, i] - target[b, i]) ** 2)
        n_vis += 1
  loss = 1.0 * ce / n_text + 3.0 * flow / n_vis + 1e-2 * z / n_text
  return loss, ce / n_text, flow / n_vis, ce / math.log(2) / nbytes


def test_loss_terms_match_float64_reference():
  rng = np.random.default_rng(0)
  batch, logits, pred, target = tiny_batch(rng)
  byte_lengths = rng.integers(1, 5, 11).astype(np.float32)
  jbatch = jax.tree.map(jnp.asarray, batch)
  loss, sums = objective.transfusion_loss(
      jnp.asarray(logits, jnp.float32), jnp.asarray(pred, jnp.float32),
      jnp.asarray(target, jnp.float32), jbatch, objective.loss_normalizers(jbatch),
      jnp.asarray(byte_lengths), LOSS_CFG)
  ref_loss, ref_ce, ref_flow, ref_bpb = reference_loss(batch, logits, pred, target, byte_lengths)
  summary = objective.summarize(sums, LOSS_CFG)
  assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
  assert float(summary["loss"]) == pytest.approx(ref_loss, rel=1e-5)
  assert float(summary["text_loss"]) == pytest.approx(ref_ce, rel=1e-5)
  assert float(summary["flow_loss"]) == pytest.approx(ref_flow, rel=1e-5)
  assert float(summary["text_bits_per_byte"]) == pytest.approx(ref_bpb, rel=1e-5)


def test_frame_tokens_land_in_their_slots():
  rng = np.random.default_rng(2)
  frame_tokens = rng.normal(size=(2, 6, 3)).astype(np.float32)
  frame_slot = np.asarray([[-1, 0, 1, 2, -1, 3, 4, 5], [5, 4, 3, -1, 2, 1, 0, -1]])
  seq = np.asarray(place_frame_tokens(jnp.asarray(frame_tokens), jnp.asarray(frame_slot)))
  for b in range(2):
    for position, slot in enumerate(frame_slot[b]):   # non-slots hold slot 0's token
      np.testing.assert_array_equal(seq[b, position], frame_tokens[b, max(slot, 0)])


def noised_image_text_batch(config, tokenizer, space: str = "x"):
  """(batch, its frames' latent tokens, ModelInputs, flow target in `space`) of one
  image–text batch of `config`, noised with shift 1."""
  from mmpretrain.data.pipeline import make_batches  # pylint: disable=import-outside-toplevel
  from mmpretrain.train.step import Trainer  # pylint: disable=import-outside-toplevel
  config.data.mixture = {"image_text": 1.0}
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  latents = frame_latent_tokens(trainer.run.representation, trainer.run.frozen, batch["frames"],
                                config.visual.patch_size)
  keys = jax.random.split(jax.random.key(0), batch["tokens"].shape[0])
  inputs, target = objective.noised_inputs(jax.tree.map(jnp.asarray, batch), latents, keys,
                                           config.diffusion, 1.0, space=space)
  return batch, latents, inputs, target


def test_context_frames_stay_clean_and_generated_frames_share_one_t(config, tokenizer):
  batch, latents, inputs, target = noised_image_text_batch(config, tokenizer)
  t, visual = np.asarray(inputs.timesteps), batch["modality"] == MODALITY_VISUAL
  gen, ctx = visual & batch["visual_loss_mask"], visual & ~batch["visual_loss_mask"]
  assert gen.any() and ctx.any()
  assert np.all(t[ctx] == 0.0) and np.all(t[gen] > 0.0)
  clean = np.asarray(place_frame_tokens(latents, batch["frame_slot"]))
  np.testing.assert_allclose(np.asarray(inputs.visual_latents)[ctx], clean[ctx], atol=1e-6)
  for b in range(batch["tokens"].shape[0]):             # one t per frame
    for block in np.unique(batch["block_ids"][b][gen[b]]):
      assert len(np.unique(t[b][batch["block_ids"][b] == block])) == 1
  np.testing.assert_allclose(np.asarray(target)[gen], clean[gen], atol=1e-6)  # x-prediction


def test_gradient_accumulation_equals_full_batch(config, tokenizer):
  from mmpretrain.data.pipeline import make_batches  # pylint: disable=import-outside-toplevel
  from mmpretrain.train.step import Trainer  # pylint: disable=import-outside-toplevel
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  batch = jax.tree.map(jnp.asarray, batch)
  results = {}
  for accum in (1, 2, 4):
    config.optimizer.grad_accum_steps = accum
    trainer = Trainer(Run(config), tokenizer.byte_lengths())
    params = trainer.init_state(0).params
    gradients = lambda p, b, t=trainer: t.gradients(p, b, jax.random.key(3), t.run.frozen)
    results[accum] = jax.jit(gradients)(params, batch)
  grads1, sums1 = results[1]
  assert float(sums1["visual_tokens"]) > 0 and float(sums1["text_tokens"]) > 0
  for accum in (2, 4):
    grads, sums = results[accum]
    for key in ("text_ce_sum", "flow_mse_sum", "text_tokens", "visual_tokens"):
      np.testing.assert_allclose(sums[key], sums1[key], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, grads1)


@pytest.mark.parametrize("prediction, space", [("x", "prediction"), ("x", "v"), ("v", "x"),
                                               ("eps", "prediction"), ("eps", "x"), ("eps", "v")])
def test_flow_loss_in_each_space_matches_float64_reference(prediction, space):
  """loss.flow_space re-expresses the head's output before the MSE: x-prediction in v-space
  is ‖(z − x̂)/t − (ε − x)‖², ε-prediction in x-space ‖(z − tε̂)/(1 − t) − x‖² (float64)."""
  rng = np.random.default_rng(4)
  batch, _, pred, x = tiny_batch(rng)
  eps = rng.normal(size=x.shape)
  t = np.where(batch["visual_loss_mask"], rng.uniform(0.0, 1.0, batch["modality"].shape), 0.0)
  z = (1 - t[..., None]) * x + t[..., None] * eps
  config = ml_collections.ConfigDict({"diffusion": {"prediction": prediction, "min_t": 0.05,
                                                    "skip": False},
                                      "loss": {"flow_space": space}})
  inputs = ModelInputs(tokens=None, modality=None, segment_ids=None, block_ids=None,
                       positions=None, visual_latents=jnp.asarray(z, jnp.float32),
                       timesteps=jnp.asarray(t, jnp.float32))
  head = objective.flow_loss_inputs(jnp.asarray(pred, jnp.float32), inputs, config)
  target = diffusion.flow_target(jnp.asarray(x, jnp.float32), jnp.asarray(eps, jnp.float32),
                                 objective.flow_space(config))
  tt = t[..., None]
  reference_head = {   # what the head's output means in the loss's space, by hand
      ("x", "prediction"): pred, ("eps", "prediction"): pred,
      ("x", "v"): (z - pred) / np.maximum(tt, 0.05),
      ("v", "x"): z - tt * pred,
      ("eps", "x"): (z - tt * pred) / np.maximum(1 - tt, 0.05),
      ("eps", "v"): (pred - z) / np.maximum(1 - tt, 0.05)}[prediction, space]
  reference_target = {"x": x, "v": eps - x, "eps": eps}[
      prediction if space == "prediction" else space]
  mask = batch["visual_loss_mask"]
  expected = np.mean((reference_head - reference_target)[mask] ** 2)
  got = np.mean(np.square(np.asarray(head) - np.asarray(target))[mask])
  assert got == pytest.approx(expected, rel=1e-4)


def test_context_noise_noises_context_frames_a_little_one_t_per_frame(config, tokenizer):
  """diffusion.context_noise: context frames at t ~ U(0, level), z = (1 − t)·x + t·ε with the
  same ε the flow target uses; generated frames unchanged; routing still sees them as
  context (float64 check of the path)."""
  config.diffusion.context_noise = 0.2
  batch, latents, inputs, noise = noised_image_text_batch(config, tokenizer, space="eps")
  t = np.asarray(inputs.timesteps, np.float64)
  visual = batch["modality"] == MODALITY_VISUAL
  ctx = visual & ~batch["visual_loss_mask"]
  assert ctx.any() and np.all(t[ctx] > 0.0) and np.all(t[ctx] <= 0.2)
  assert np.all(t[~visual] == 0.0)
  for b in range(batch["tokens"].shape[0]):             # one t per context frame
    for block in np.unique(batch["block_ids"][b][ctx[b]]):
      assert len(np.unique(t[b][batch["block_ids"][b] == block])) == 1
  clean = np.asarray(place_frame_tokens(latents, batch["frame_slot"]), np.float64)
  expected = (1 - t[..., None]) * clean + t[..., None] * np.asarray(noise, np.float64)
  np.testing.assert_allclose(np.asarray(inputs.visual_latents)[visual], expected[visual],
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(inputs.generated), batch["visual_loss_mask"])


def reference_change_weights(batch, latents, weight, threshold):
  """By search: a generated visual position weighs `weight` where the position of the
  same document holding the token one frame earlier (slot − T) exists and differs."""
  B, L = batch["tokens"].shape
  T = latents.shape[1] // batch["frames"].shape[1]
  out = np.ones((B, L))
  for b in range(B):
    for p in range(L):
      if batch["modality"][b, p] != MODALITY_VISUAL or not batch["visual_loss_mask"][b, p]:
        continue
      slot = batch["frame_slot"][b, p]
      earlier = [q for q in range(L) if batch["modality"][b, q] == MODALITY_VISUAL
                 and batch["segment_ids"][b, q] == batch["segment_ids"][b, p]
                 and batch["frame_slot"][b, q] == slot - T]
      if earlier and np.mean((latents[b, slot] - latents[b, slot - T]) ** 2) > threshold:
        out[b, p] = weight
  return out


def test_frame_change_weights_match_a_search_over_each_document(data_dir, tokenizer):
  from mmpretrain.data.pipeline import make_batches  # pylint: disable=import-outside-toplevel
  from conftest import all_streams_config  # pylint: disable=import-outside-toplevel
  config = all_streams_config(data_dir)
  config.visual.representation, config.visual.patch_size = "pixels", 4
  config.data.batch_size = 4
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  from mmpretrain.tokenizers.visual import make_representation  # pylint: disable=import-outside-toplevel
  latents = np.asarray(frame_latent_tokens(make_representation(config), {},
                                           jnp.asarray(batch["frames"]), 4))
  lcfg = ml_collections.ConfigDict({"frame_change_weight": 7.0, "frame_change_threshold": 1e-3})
  got = np.asarray(objective.frame_change_weights(jax.tree.map(jnp.asarray, batch),
                                                  jnp.asarray(latents), lcfg))
  expected = reference_change_weights(batch, latents, 7.0, 1e-3)
  np.testing.assert_array_equal(got, expected)
  changed = expected == 7.0
  generated = batch["visual_loss_mask"] & (batch["modality"] == MODALITY_VISUAL)
  assert 0 < changed.sum() < generated.sum()     # some generated tokens change, not all


def test_flow_weights_scale_each_position_of_the_loss_not_the_logged_mse():
  rng = np.random.default_rng(5)
  batch, logits, pred, target = tiny_batch(rng)
  weights = rng.uniform(1.0, 4.0, batch["modality"].shape)
  jbatch = jax.tree.map(jnp.asarray, batch)
  args = (jnp.asarray(logits, jnp.float32), jnp.asarray(pred, jnp.float32),
          jnp.asarray(target, jnp.float32), jbatch, objective.loss_normalizers(jbatch),
          jnp.ones(11), LOSS_CFG)
  plain, plain_sums = objective.transfusion_loss(*args)
  weighted, sums = objective.transfusion_loss(*args, jnp.asarray(weights, jnp.float32))
  mask = batch["visual_loss_mask"]
  mse = np.mean((pred - target) ** 2, axis=-1)
  extra = 3.0 * np.sum((mse * (weights - 1.0))[mask]) / mask.sum()
  assert float(weighted) == pytest.approx(float(plain) + extra, rel=1e-5)
  assert float(sums["flow_mse_sum"]) == pytest.approx(float(plain_sums["flow_mse_sum"]), rel=1e-6)
