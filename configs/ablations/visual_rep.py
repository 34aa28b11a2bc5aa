"""The paper's first ablation: the same unified model on three visual representations.

  rae     a frozen semantic encoder's tokens (RAE; train-encoder then train-rae)
  vae     a convolutional KL autoencoder's latents (train-vae)
  pixels  raw pixels

Every arm keeps the demo's recipe, its time shift of 4 included. Each arm sees 64 latent
tokens per 32×32 frame: the RAE's 8×8 grid of 128-d tokens (patch 1), the VAE's 16×16×4
grid in 2×2 patches, pixels in 4×4 patches. The RAE and VAE
arms read the representation directory their stage wrote:

  mmpretrain train --config=configs/ablations/visual_rep.py:rae --workdir=runs/vr_rae \
      --config.visual.checkpoint=runs/demo_rae/representation
  mmpretrain train --config=configs/ablations/visual_rep.py:vae --workdir=runs/vr_vae \
      --config.visual.checkpoint=runs/demo_vae/representation
  mmpretrain train --config=configs/ablations/visual_rep.py:pixels --workdir=runs/vr_pixels

and `mmpretrain eval-representation` with the same arguments scores the representations
themselves (held-out PSNR, linear probe).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position

ARMS = {"rae": ("runs/demo_rae/representation", 1),
        "vae": ("runs/demo_vae/representation", 2),
        "pixels": ("", 4)}


def get_config(arg=None):
  arm = arg or "rae"
  if arm not in ARMS:
    raise ValueError(f"config arg {arg!r}: use one of {list(ARMS)}")
  c = demo.get_config()
  c.visual.representation = arm
  c.visual.checkpoint, c.visual.patch_size = ARMS[arm]
  return c
