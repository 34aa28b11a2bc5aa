"""The VAE arm of the representation ablation on the 1B dense model: an 8×-downsampling
VAE with 16 latent channels (FLUX's autoencoder's shapes) at 256 px, 2×2 latent patches,
so each image is 256 tokens of 64 channels, as many tokens as the RAE arm's 224-px
So400m grid. Its latents are precomputed like the RAE arm's.

`configs/paper/vae_f8c16/vae.json` gives the VAE's shapes, which is all a compile reads;
to train, point `visual.checkpoint` at a `train-vae` output or a diffusers AutoencoderKL.

  mmpretrain compile --config=configs/paper/vae_1b.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dense_1b  # pylint: disable=wrong-import-position

TOPOLOGY = dense_1b.TOPOLOGY
VAE_F8C16 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vae_f8c16")


def get_config(arg=None):
  c = dense_1b.get_config(arg)
  c.visual.representation, c.visual.checkpoint, c.visual.patch_size = "vae", VAE_F8C16, 2
  c.data.image_size = 256
  return c
