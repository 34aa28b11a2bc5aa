"""The RAE chain on tiny configs: the contrastive encoder stage, the RAE decoder stage, and
the unified model training on the RAE's latents; the pieces against float64 references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from mmpretrain.data.images import image_batches
from mmpretrain.encoders import contrastive, store
from mmpretrain.stages.encoder import train_encoder
from mmpretrain.stages.rae import latent_stats, train_rae, whitened_principal_channels
from mmpretrain.tokenizers import rae as rae_lib
from mmpretrain.tokenizers.visual import make_representation
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec


def stage_config(data_dir, steps: int):
  c = tiny_config(data_dir)
  c.data.batch_size = 32
  c.encoder.image = {"patch_size": 4, "width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
  c.encoder.text = {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
  c.rae.decoder = {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
  c.rae.stats_batches = 2
  c.rae.perceptual_weight = 0.1
  c.rae.gan_weight, c.rae.discriminator_width = 0.1, 8
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-3, 2
  c.train.num_steps, c.train.log_every = steps, 5
  return c


@pytest.fixture(scope="module")
def stages(data_dir, tmp_path_factory):
  """(encoder summary, RAE summary) of the two stage commands on tiny configs."""
  encoder = train_encoder(stage_config(data_dir, 10), str(tmp_path_factory.mktemp("encoder")))
  config = stage_config(data_dir, 40)
  config.rae.encoder = encoder["encoder"]
  return encoder, train_rae(config, str(tmp_path_factory.mktemp("rae")))


def test_rae_stage_learns_to_reconstruct_and_reports_held_out_psnr(stages):
  encoder, rae = stages
  assert 0.0 <= encoder["digit_zero_shot_accuracy"] <= 1.0
  assert rae["last"]["l1"] < 0.6 * rae["first"]["l1"]          # with the GAN term on
  assert rae["validation_psnr"] > 10.0
  assert rae["latent_grid"] == [4, 4, 32]          # 16×16 frames, 4×4 patches, width 32


def test_latent_stats_match_float64_numpy_and_normalize_the_tokens(stages, data_dir, tokenizer):
  rae = rae_lib.load_rae(stages[1]["representation"])
  config = stage_config(data_dir, 1)
  batch = next(image_batches(config, tokenizer, {"mnist_captions": 1.0}, split="train",
                             batch_size=64, caption_len=1, seed=5))
  tokens = np.asarray(rae.encoder(rae_lib.normalize(batch["images"], rae.encoder.cfg))["tokens"],
                      np.float64).reshape(-1, 32)
  mean, std, correlation = latent_stats(rae, iter([batch]), 1)   # jitted: f32 tokens differ
  np.testing.assert_allclose(mean, tokens.mean(0), rtol=1e-6, atol=1e-6)   # by ~1 ulp
  np.testing.assert_allclose(std, tokens.std(0), rtol=1e-5)
  np.testing.assert_allclose(correlation, np.corrcoef(tokens.T), atol=1e-5)
  rae.mean[...], rae.std[...] = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  normalized = np.asarray(rae.encode(batch["images"]), np.float64).reshape(-1, 32)
  np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(normalized.std(0), 1.0, atol=1e-4)


def test_principal_channels_are_whitened_and_keep_the_most_variance():
  rng = np.random.default_rng(0)
  mixing = rng.normal(size=(6, 6)) * np.array([5.0, 3.0, 1.0, 0.1, 0.1, 0.1])[:, None]
  tokens = rng.normal(size=(20000, 6)) @ mixing
  projection = whitened_principal_channels(np.cov(tokens.T), 3)
  projected = tokens @ projection
  np.testing.assert_allclose(np.cov(projected.T), np.eye(3), atol=1e-9)
  # The three channels span the top-3 principal subspace: nothing more of the variance
  # is kept by any other 3-D projection (here the residual is the 0.1-scaled directions).
  _, _, vt = np.linalg.svd(tokens - tokens.mean(0), full_matrices=False)
  basis, _ = np.linalg.qr(projection)
  np.testing.assert_allclose(np.abs(np.linalg.svd(vt[:3] @ basis)[1]), 1.0, atol=1e-6)


def test_a_reduced_rae_encodes_its_leading_channels_and_decodes_them(stages, data_dir, tokenizer):
  config = stage_config(data_dir, 1)
  config.rae.latent_channels = 8
  encoder = store.load_encoder(stages[0]["encoder"])
  rae = rae_lib.RAE(encoder, rae_lib.decoder_config(config, encoder.cfg), rngs=nnx.Rngs(0))
  batch = next(image_batches(config, tokenizer, {"mnist_captions": 1.0}, split="train",
                             batch_size=64, caption_len=1, seed=5))
  mean, std, correlation = latent_stats(rae, iter([batch]), 1)
  rae.mean[...], rae.std[...] = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  rae.projection[...] = jnp.asarray(whitened_principal_channels(correlation, 8), jnp.float32)
  latents = np.asarray(rae.encode(batch["images"]), np.float64).reshape(-1, 8)
  np.testing.assert_allclose(np.cov(latents.T), np.eye(8), atol=1e-3)
  assert rae.decode(jnp.asarray(latents.reshape(64, 16, 8), jnp.float32)).shape == (64, 16, 16, 1)


def test_saved_rae_and_encoder_restore_to_the_same_function(stages, tokenizer, data_dir):
  rae = rae_lib.load_rae(stages[1]["representation"])
  encoder = store.load_encoder(stages[0]["encoder"])
  frames = next(image_batches(stage_config(data_dir, 1), tokenizer, {"mnist_captions": 1.0},
                              split="validation", batch_size=4, caption_len=1, seed=0))["images"]
  from_rae = rae.encoder(rae_lib.normalize(frames, rae.encoder.cfg))["tokens"]
  alone = encoder(rae_lib.normalize(frames, encoder.cfg))["tokens"]
  np.testing.assert_array_equal(np.asarray(from_rae), np.asarray(alone))   # the frozen copy


def test_unified_model_trains_on_rae_latents_and_leaves_the_rae_alone(stages, data_dir, tokenizer):
  config = tiny_config(data_dir)
  config.visual.representation, config.visual.checkpoint = "rae", stages[1]["representation"]
  config.visual.patch_size = 1
  representation = make_representation(config)
  assert representation.latent_grid == (4, 4, 32)
  run = Run(config)
  assert run.time_shift == pytest.approx(math.sqrt(4 * 4 * 32 / 4096))
  from mmpretrain.data.pipeline import make_batches  # pylint: disable=import-outside-toplevel
  trainer = Trainer(run, tokenizer.byte_lengths())
  frozen_before = jax.tree.map(np.asarray, trainer.run.frozen)
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  state, metrics = trainer.step(trainer.init_state(0), batch)
  assert np.isfinite(float(metrics["flow_loss"])) and float(metrics["visual_tokens"]) > 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trainer.run.frozen),
               frozen_before)
  frames = representation.decode(trainer.run.frozen, representation.encode(trainer.run.frozen,
                                                                       batch["frames"]))
  assert frames.shape == batch["frames"].shape and frames.dtype == jnp.uint8
  del state


@pytest.mark.slow        # ~22 s; tests/test_latent_cache.py checks the same on pixels
def test_training_on_cached_rae_latents_equals_training_with_the_live_encoder(
    stages, data_dir, tokenizer):
  """The paper's frozen encoder run once by `prepare` (visual.cached_latents): same frames'
  latents, same losses and parameters after 3 steps as encoding every step."""
  from test_latent_cache import assert_cached_training_equals_live  # pylint: disable=import-outside-toplevel
  config = tiny_config(data_dir)
  config.visual.representation, config.visual.checkpoint = "rae", stages[1]["representation"]
  config.visual.patch_size = 1
  config.data.mixture = {"image_text": 1.0}
  assert_cached_training_equals_live(config, tokenizer, rtol=1e-4, frame_atol=1e-4)


def test_an_rae_for_other_frames_is_refused_with_the_reason(stages, data_dir):
  config = tiny_config(data_dir)
  config.visual.representation, config.visual.checkpoint = "rae", stages[1]["representation"]
  config.data.image_size = 32
  with pytest.raises(ValueError, match="reconstructs 16² × 1 frames but data.image_size=32"):
    make_representation(config)


def test_sigmoid_loss_matches_a_float64_loop_with_duplicate_captions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 5)) * 3
  captions = np.array([[1, 2], [3, 4], [1, 2], [5, 0], [3, 4]])
  want = 0.0
  for i in range(5):
    for j in range(5):
      z = 1.0 if (captions[i] == captions[j]).all() else -1.0
      want -= math.log(1.0 / (1.0 + math.exp(-z * logits[i, j])))
  got = contrastive.sigmoid_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(captions))
  assert float(got) == pytest.approx(want / 5, rel=1e-5)


def test_text_tower_reads_up_to_the_last_real_token_only():
  cfg = contrastive.TextConfig(vocab_size=50, max_len=8, width=16, depth=2, num_heads=2,
                               mlp_dim=32)
  tower = contrastive.TextTower(cfg, 8, rngs=nnx.Rngs(0))
  ids = jnp.array([[5, 6, 7, 0, 0, 0], [5, 6, 7, 9, 0, 0]])
  longer_padding = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0]])
  out = tower(ids)
  np.testing.assert_allclose(tower(longer_padding)[0], out[0], atol=1e-5)  # padding is inert
  assert not np.allclose(out[0], out[1])                                  # content is not


def test_adversarial_terms_give_each_player_only_its_own_gradient():
  from mmpretrain.stages import gan  # pylint: disable=import-outside-toplevel

  class Players(nnx.Module):
    def __init__(self):
      self.fake = nnx.Param(jnp.full((2, 8, 8, 1), 0.3))        # the "generator"
      self.discriminator = gan.PatchDiscriminator(1, 8, rngs=nnx.Rngs(0))

  real = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  players = Players()
  term = lambda which: nnx.grad(
      lambda p: gan.adversarial_terms(p.discriminator, real, p.fake[...])[which]
      if which is not None else sum(gan.adversarial_terms(p.discriminator, real, p.fake[...])))
  both, generator_only, critic_only = term(None)(players), term(0)(players), term(1)(players)
  np.testing.assert_allclose(both["fake"][...], generator_only["fake"][...], rtol=1e-6)
  assert np.abs(np.asarray(critic_only["fake"][...])).max() == 0      # critic: no fake grad
  for (path, g_both), (_, g_critic) in zip(nnx.to_flat_state(both["discriminator"]),
                                           nnx.to_flat_state(critic_only["discriminator"])):
    np.testing.assert_allclose(g_both[...], g_critic[...], rtol=1e-6, err_msg=str(path))


def test_sampler_latent_tokens_round_trip_to_the_rae_decoding(stages, data_dir, tokenizer):
  """frames → the sampler's latent tokens (encoder, per-channel normalization, p×p patches)
  → its frame decoder equals the RAE module decoding its own normalized encoder tokens, and
  the tokens are the float64 normalization of the raw encoder tokens."""
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.generate.sample import make_frame_decoder
  _, rae_summary = stages
  config = tiny_config(data_dir)
  config.visual.representation, config.visual.checkpoint = "rae", rae_summary["representation"]
  config.visual.patch_size = 2                      # 4×4 grid → 2×2 tokens of 2·2·width
  run = Run(config)
  frames = next(image_batches(config, tokenizer, {"mnist_captions": 1.0}, split="validation",
                              batch_size=6, caption_len=8, seed=0))["images"]
  tokens = run.latent_tokens(frames[:, None])                         # [6, 1·4, 2·2·width]
  via_sampler = np.asarray(make_frame_decoder(run)(tokens))

  rae = rae_lib.load_rae(rae_summary["representation"])
  raw = np.asarray(rae.encoder(rae_lib.normalize(jnp.asarray(frames), rae.encoder.cfg))["tokens"],
                   np.float64)
  normalized = (raw - np.asarray(rae.mean[...], np.float64)) / np.asarray(rae.std[...], np.float64)
  grid = normalized.reshape(6, 4, 4, -1)            # row-major 4×4 grid of width-d tokens
  patches = grid.reshape(6, 2, 2, 2, 2, -1).transpose(0, 1, 3, 2, 4, 5).reshape(6, 4, -1)
  np.testing.assert_allclose(np.asarray(tokens), patches, rtol=1e-4, atol=1e-4)
  direct = np.asarray(rae.decode(rae.tokens(rae_lib.normalize(jnp.asarray(frames),
                                                              rae.encoder.cfg))))
  direct = np.clip(np.round((direct + 1.0) * 127.5), 0, 255).astype(np.uint8)
  assert np.abs(via_sampler.astype(int) - direct.astype(int)).max() <= 1
  assert (via_sampler == direct).mean() > 0.99


def test_abstract_params_are_the_saved_params_shapes_without_reading_them(stages, data_dir):
  from mmpretrain.tokenizers.rae import RAERepresentation  # pylint: disable=C0415
  representation = RAERepresentation(stages[1]["representation"], 16, 1)
  loaded, abstract = representation.load_params(), representation.abstract_params()
  assert jax.tree.structure(loaded) == jax.tree.structure(abstract)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(abstract)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype) and isinstance(b, jax.ShapeDtypeStruct)
  # A second representation of the same RAE reuses the traced shapes (a compile report
  # builds one per compile; tracing a So400m's construction takes ~17 s).
  again = RAERepresentation(stages[1]["representation"], 16, 1)
  assert again.abstract_params() is abstract
