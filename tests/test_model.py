"""The transformer: scan == unrolled, causality and block bidirectionality, modality FFNs."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import base
from mmpretrain.batch import MODALITY_PAD, MODALITY_TEXT, MODALITY_VISUAL, TOKEN_KINDS
from mmpretrain.model.masks import attention_mask
from mmpretrain.model import transformer
from mmpretrain.model.transformer import ModelInputs, Transfusion, token_kinds

PATCH = 8
FRAME_TOKENS = 4              # make_inputs: one 4-token image per row


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
  unrolled = Transfusion(cfg, PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(1))
  scanned_state = nnx.state(scanned)
  state = nnx.state(unrolled)
  flat = dict(nnx.to_flat_state(state))
  for path, var in nnx.to_flat_state(scanned_state):
    if path[:2] == ("decoder", "runs") and path[3] == "blocks":    # stacked [layers, ...]
      for layer in range(var[...].shape[0]):
        flat[path[:4] + (layer,) + path[4:]][...] = var[...][layer]
    else:
      flat[path][...] = var[...]
  nnx.update(unrolled, nnx.from_flat_state(flat))
  return unrolled


MOE = {"num_experts": 4, "first_dense_layers": 1, "every_n_layers": 2, "router": "sigmoid",
       "shared_experts": "per_modality"}


@pytest.mark.parametrize("remat,moe", [("none", {}), ("full", {}), ("none", MOE)])
def test_scan_equals_unrolled(remat, moe):
  cfg = model_config(scan_layers=True, remat=remat, qk_norm=True, modality_ffn=True,
                     num_layers=4)
  cfg.moe.update(moe)
  scanned = Transfusion(cfg, PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  unrolled = unrolled_copy(scanned, cfg)
  inputs = make_inputs()
  for got, want in zip(jax.tree.leaves(unrolled(inputs)), jax.tree.leaves(scanned(inputs))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_moe_layer_placement_and_stats():
  cfg = model_config(num_layers=4)
  cfg.moe.update(MOE)          # layers 1 and 3 are MoE
  model = Transfusion(cfg, PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  assert [run.moe for run in model.decoder.runs] == [False, True, False, True]
  _, _, stats = model(make_inputs())
  assert stats["expert_load"].shape == (2, 4) and stats["load_balance"].shape == (2,)
  # Every non-padding token makes k = 2 assignments in each MoE layer.
  np.testing.assert_array_equal(stats["expert_load"].sum(axis=1), [2 * 24, 2 * 24])


def test_future_tokens_do_not_change_past_outputs():
  model = Transfusion(model_config(), PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  a = make_inputs(0)
  b = ModelInputs(**{**a.__dict__, "tokens": a.tokens.at[:, 10:].set(5)})
  la, lb = model(a)[0], model(b)[0]
  np.testing.assert_allclose(la[:, :10], lb[:, :10], atol=1e-6)
  assert not np.allclose(la[:, 10:], lb[:, 10:])


def test_image_tokens_see_each_other_but_not_later_text():
  model = Transfusion(model_config(), PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  a = make_inputs(0)
  # Changing the last image token changes the first image token's output (bidirectional)...
  b = ModelInputs(**{**a.__dict__, "visual_latents": a.visual_latents.at[:, 7].add(1.0)})
  va, vb = model(a)[1], model(b)[1]
  assert not np.allclose(va[:, 4], vb[:, 4])
  # ...but text before the image is untouched.
  np.testing.assert_allclose(model(a)[0][:, :4], model(b)[0][:, :4], atol=1e-6)


def test_modality_ffn_routes_by_modality():
  model = Transfusion(model_config(modality_ffn=True), PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  inputs = make_inputs(0, image=(8, 12))        # image at the end: text never sees it
  before = model(inputs)
  # Perturb only the vision FFN: text positions (all before the image) must not move.
  vision_ffn = model.decoder.runs[0].blocks.vision_ffn
  vision_ffn.down.kernel[...] = vision_ffn.down.kernel[...] + 0.5
  after = model(inputs)
  np.testing.assert_allclose(before[0][:, :8], after[0][:, :8], atol=1e-6)
  assert not np.allclose(before[1][:, 8:], after[1][:, 8:])


def test_tied_embeddings_share_the_lm_head():
  # logits = h · Eᵀ: h the final-normed hidden states, E the input embedding table.
  model = Transfusion(model_config(tie_embeddings=True), PATCH, tokens_per_frame=FRAME_TOKENS,
                      rngs=nnx.Rngs(0))
  assert model.lm_head is None
  inputs = make_inputs()
  logits = np.asarray(model(inputs)[0], np.float64)
  x, token_kind, _ = model._embed(inputs)          # pylint: disable=protected-access
  x, _ = model.decoder(x, inputs.positions, attention_mask(inputs.segment_ids, inputs.block_ids),
                       token_kind)
  hidden = np.asarray(model.final_norm(x), np.float64).reshape(2, 12, -1)
  table = np.asarray(model.embed.embedding[...], np.float64)
  np.testing.assert_allclose(logits, hidden @ table.T, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = Transfusion(model_config(dtype="bfloat16"), PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model)))
  ref = Transfusion(model_config(), PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
  logits, pred, _ = model(make_inputs())
  ref_logits = ref(make_inputs())[0]
  assert logits.dtype == jnp.float32 and pred.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref_logits, atol=0.05)   # bf16 rounding only


def test_token_kinds_follow_modality_and_noise():
  modality = np.array([[MODALITY_TEXT, MODALITY_VISUAL, MODALITY_VISUAL, MODALITY_PAD]])
  timesteps = np.array([[0.0, 0.0, 0.3, 0.0]])
  kinds = np.asarray(token_kinds(jnp.asarray(modality), jnp.asarray(timesteps)))
  want = [TOKEN_KINDS.index(k) for k in ("text", "visual_understanding", "visual_generation")]
  np.testing.assert_array_equal(kinds, [want + [-1]])


def test_index_in_block_counts_from_each_blocks_first_token():
  """Brute force: a token's index in its block is its position minus the position of the
  block's first token; text (block 0) is 0."""
  rng = np.random.default_rng(0)
  positions = np.zeros((2, 12), np.int32)
  block_ids = np.zeros((2, 12), np.int32)
  block_ids[0, 2:6], block_ids[0, 7:11] = 1, 2
  block_ids[1, 0:4], block_ids[1, 5:12] = 3, 4
  for b in range(2):
    positions[b] = np.cumsum(rng.integers(1, 2, 12)) + rng.integers(0, 5)
  expected = np.zeros_like(positions)
  for b in range(2):
    for i in range(12):
      if block_ids[b, i]:
        expected[b, i] = positions[b, i] - positions[b, block_ids[b] == block_ids[b, i]].min()
  got = np.asarray(transformer.index_in_block(jnp.asarray(positions), jnp.asarray(block_ids)))
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("impl", ["chunked", "pallas", "xla"])
def test_each_attention_kernel_gives_the_einsum_models_outputs_and_gradients(impl):
  # The whole model with 5-token chunks or blocks (three, the last padded) against the
  # einsum kernel: logits, visual predictions and parameter gradients.
  dense = model_config(attention_impl="einsum", scan_layers=True)
  chunked = model_config(attention_impl=impl, attention_chunk=5, scan_layers=True)
  inputs = make_inputs()

  def outputs_and_grads(cfg):
    model = Transfusion(cfg, PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(0))
    def loss(m):
      logits, prediction, _ = m(inputs)
      return jnp.sum(logits ** 2) + jnp.sum(prediction ** 2), (logits, prediction)
    (_, outs), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return jax.tree.leaves(outs) + jax.tree.leaves(grads)

  for got, want in zip(outputs_and_grads(chunked), outputs_and_grads(dense), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5)
