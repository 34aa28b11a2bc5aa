"""The NNX AutoencoderKL against diffusers' PyTorch model: a small random config saved with
save_pretrained (every weight perturbed) loads and gives the same posterior and decoding."""
import diffusers
import numpy as np
import pytest
import torch

from conftest import tiny_config
from mmpretrain.data.images import image_batches
from mmpretrain.stages.vae import train_vae
from mmpretrain.tokenizers import vae_import
from mmpretrain.tokenizers.vae_representation import VAERepresentation
from mmpretrain.tokenizers.visual import make_representation

TOLERANCE = 1e-4      # max abs difference, float32


def reference_vae(tmp_path, **overrides):
  config = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                norm_num_groups=8, scaling_factor=0.5, shift_factor=0.1)
  model = diffusers.AutoencoderKL(**{**config, **overrides})
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2 if p.ndim > 1 else 0.5)
  model.eval().save_pretrained(tmp_path)
  return model


THREE_LEVELS = {"block_out_channels": (8, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 3,
                "up_block_types": ("UpDecoderBlock2D",) * 3, "mid_block_add_attention": False}


@pytest.mark.parametrize("overrides", [{}, THREE_LEVELS])
def test_autoencoder_kl_matches_diffusers(tmp_path, overrides):
  reference = reference_vae(tmp_path, **overrides)
  ours = vae_import.load_diffusers_vae(str(tmp_path))
  images = np.random.default_rng(0).uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    posterior = reference.encode(torch.tensor(images.transpose(0, 3, 1, 2))).latent_dist
    decoded = reference.decode(posterior.mean).sample
  mean, logvar = ours.moments(images)
  np.testing.assert_allclose(np.asarray(mean), posterior.mean.numpy().transpose(0, 2, 3, 1),
                             atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(np.asarray(logvar), posterior.logvar.numpy().transpose(0, 2, 3, 1),
                             atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(np.asarray(ours.decode_raw(mean)),
                             decoded.numpy().transpose(0, 2, 3, 1), atol=TOLERANCE, rtol=0)
  assert ours.cfg.scaling_factor == 0.5 and ours.cfg.shift_factor == 0.1
  z = np.asarray(mean)
  np.testing.assert_allclose(np.asarray(ours.from_diffusion(ours.to_diffusion(z))), z, atol=1e-6)


@pytest.mark.slow              # ~30 s; make test-slow
def test_vae_stage_trains_scales_latents_and_serves_the_unified_model(data_dir, tokenizer,
                                                                     tmp_path):
  config = tiny_config(data_dir)
  config.data.batch_size = 16
  config.vae.block_out_channels, config.vae.norm_num_groups = (8, 16), 4
  config.train.num_steps, config.train.log_every = 30, 10
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 2e-3, 2
  summary = train_vae(config, str(tmp_path))
  assert summary["last"]["l1"] < summary["first"]["l1"]
  assert summary["latent_grid"] == [8, 8, 4]             # 16×16 frames, one downsampling

  config.visual.representation = "vae"
  config.visual.checkpoint = summary["representation"]
  representation = make_representation(config)
  params = representation.load_params()
  frames = next(image_batches(config, tokenizer, {"mnist_captions": 1.0}, split="validation",
                              batch_size=64, caption_len=1, seed=0))["images"]
  latents = np.asarray(representation.encode(params, frames))
  assert latents.shape == (64, 8, 8, 4)
  assert 0.7 < latents.std() < 1.3          # scaled to about unit std on held-out frames
  assert representation.decode(params, latents).shape == frames.shape


def test_a_diffusers_rgb_vae_serves_gray_frames(tmp_path):
  reference_vae(tmp_path)
  representation = VAERepresentation(str(tmp_path), image_size=16, channels=1)
  params = representation.load_params()
  frames = np.random.default_rng(0).integers(0, 256, size=(2, 3, 16, 16, 1), dtype=np.uint8)
  latents = representation.encode(params, frames)
  assert latents.shape == (2, 3, 8, 8, 4) and representation.latent_grid == (8, 8, 4)
  assert representation.decode(params, latents).shape == frames.shape
