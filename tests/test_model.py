"""The transformer: scan == unrolled, causality and block bidirectionality, modality FFNs."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import base
from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL
from mmpretrain.model.transformer import ModelInputs, Transfusion

PATCH = 8


def model_config(**overrides):
  c = base.get_config("runlocal").model
  c.vocab_size, c.d_model, c.num_layers, c.mlp_dim, c.head_dim = 97, 32, 3, 64, 16
  c.num_heads, c.num_kv_heads = 4, 2          # grouped-query attention
  for k, v in overrides.items():
    c[k] = v
  return c


def make_inputs(seed=0, B=2, L=12, image=(4, 8)):
  """Text with one image occupying positions [image[0], image[1]) of every row."""
  rng = np.random.default_rng(seed)
  modality = np.full((B, L), MODALITY_TEXT, np.int32)
  block = np.zeros((B, L), np.int32)
  modality[:, image[0]:image[1]] = MODALITY_VISUAL
  block[:, image[0]:image[1]] = 1
  t = np.where(modality == MODALITY_VISUAL, rng.uniform(size=(B, L)), 0.0)
  return ModelInputs(
      tokens=jnp.asarray(rng.integers(0, 97, (B, L)), jnp.int32), modality=jnp.asarray(modality),
      segment_ids=jnp.ones((B, L), jnp.int32), block_ids=jnp.asarray(block),
      positions=jnp.broadcast_to(jnp.arange(L), (B, L)),
      visual_latents=jnp.asarray(rng.normal(size=(B, L, PATCH)), jnp.float32),
      timesteps=jnp.asarray(t, jnp.float32))


def unrolled_copy(scanned: Transfusion, cfg) -> Transfusion:
  """An unrolled model holding exactly the scanned model's weights."""
  cfg = copy.deepcopy(cfg)
  cfg.scan_layers = False
  unrolled = Transfusion(cfg, PATCH, rngs=nnx.Rngs(1))
  scanned_state = nnx.state(scanned)
  state = nnx.state(unrolled)
  flat = dict(nnx.to_flat_state(state))
  for path, var in nnx.to_flat_state(scanned_state):
    if path[:2] == ("decoder", "blocks"):
      for layer in range(cfg.num_layers):
        flat[path[:2] + (layer,) + path[2:]][...] = var[...][layer]
    else:
      flat[path][...] = var[...]
  nnx.update(unrolled, nnx.from_flat_state(flat))
  return unrolled


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_equals_unrolled(remat):
  cfg = model_config(scan_layers=True, remat=remat, qk_norm=True, modality_ffn=True)
  scanned = Transfusion(cfg, PATCH, rngs=nnx.Rngs(0))
  unrolled = unrolled_copy(scanned, cfg)
  inputs = make_inputs()
  for got, want in zip(unrolled(inputs), scanned(inputs)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_future_tokens_do_not_change_past_outputs():
  model = Transfusion(model_config(), PATCH, rngs=nnx.Rngs(0))
  a = make_inputs(0)
  b = ModelInputs(**{**a.__dict__, "tokens": a.tokens.at[:, 10:].set(5)})
  (la, _), (lb, _) = model(a), model(b)
  np.testing.assert_allclose(la[:, :10], lb[:, :10], atol=1e-6)
  assert not np.allclose(la[:, 10:], lb[:, 10:])


def test_image_tokens_see_each_other_but_not_later_text():
  model = Transfusion(model_config(), PATCH, rngs=nnx.Rngs(0))
  a = make_inputs(0)
  # Changing the last image token changes the first image token's output (bidirectional)...
  b = ModelInputs(**{**a.__dict__, "visual_latents": a.visual_latents.at[:, 7].add(1.0)})
  (_, va), (_, vb) = model(a), model(b)
  assert not np.allclose(va[:, 4], vb[:, 4])
  # ...but text before the image is untouched.
  np.testing.assert_allclose(model(a)[0][:, :4], model(b)[0][:, :4], atol=1e-6)


def test_modality_ffn_routes_by_modality():
  model = Transfusion(model_config(modality_ffn=True), PATCH, rngs=nnx.Rngs(0))
  inputs = make_inputs(0, image=(8, 12))        # image at the end: text never sees it
  before = model(inputs)
  # Perturb only the vision FFN: text positions (all before the image) must not move.
  vision_ffn = model.decoder.blocks.vision_ffn
  vision_ffn.down.kernel[...] = vision_ffn.down.kernel[...] + 0.5
  after = model(inputs)
  np.testing.assert_allclose(before[0][:, :8], after[0][:, :8], atol=1e-6)
  assert not np.allclose(before[1][:, 8:], after[1][:, 8:])


def test_tied_embeddings_share_the_lm_head():
  model = Transfusion(model_config(tie_embeddings=True), PATCH, rngs=nnx.Rngs(0))
  assert model.lm_head is None
  logits, _ = model(make_inputs())
  assert logits.shape == (2, 12, 97)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = Transfusion(model_config(dtype="bfloat16"), PATCH, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model)))
  ref = Transfusion(model_config(), PATCH, rngs=nnx.Rngs(0))
  logits, pred = model(make_inputs())
  ref_logits, _ = ref(make_inputs())
  assert logits.dtype == jnp.float32 and pred.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref_logits, atol=0.05)   # bf16 rounding only
