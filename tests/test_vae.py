"""The NNX AutoencoderKL against diffusers' PyTorch model: a small random config saved with
save_pretrained (every weight perturbed) loads and gives the same posterior and decoding."""
import diffusers
import numpy as np
import pytest
import torch

from mmpretrain.tokenizers import vae_import

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
