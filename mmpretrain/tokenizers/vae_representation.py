"""A VAE checkpoint as the unified model's representation, whichever format it is in: one
written by `mmpretrain train-vae` (vae.json, vae.py) or a diffusers AutoencoderKL
(config.json and safetensors, vae_import.py). This module chooses; the formats below it
know nothing of each other.
"""
import jax.numpy as jnp
from flax import nnx

from mmpretrain import storage
from mmpretrain.pixels import to_signed, to_uint8
from mmpretrain.encoders import store
from mmpretrain.tokenizers import vae_import
from mmpretrain.tokenizers.vae import VAE_CONFIG, AutoencoderKL, VAEConfig


def _config(directory: str) -> tuple[VAEConfig, bool]:
  """(config, whether the directory is a diffusers checkpoint)."""
  for name, diffusers in ((VAE_CONFIG, False), ("config.json", True)):
    path = storage.join(directory, name)
    if storage.exists(path):
      saved = storage.read_json(path)
      if diffusers:
        return vae_import.config_from_diffusers(saved), True
      saved["block_out_channels"] = tuple(saved["block_out_channels"])
      return VAEConfig(**saved), False
  raise FileNotFoundError(f"{directory} holds no {VAE_CONFIG} (`mmpretrain train-vae`) or "
                          "diffusers config.json: set config.visual.checkpoint to one")


def load_vae(directory: str) -> AutoencoderKL:
  cfg, diffusers = _config(directory)
  if diffusers:
    return vae_import.load_diffusers_vae(directory)
  return store.restore_module(directory, nnx.eval_shape(lambda: AutoencoderKL(cfg,
                                                                              rngs=nnx.Rngs(0))))


class VAERepresentation:
  """The unified model's view of a VAE: latents (mean − shift)·scale on an
  (H/f, W/f, latent_channels) grid. Gray frames are repeated to an RGB VAE's channels and
  its output averaged back."""

  def __init__(self, directory: str, image_size: int, channels: int):
    self.cfg, _ = _config(directory)
    f = self.cfg.downsample
    if image_size % f:
      raise ValueError(f"data.image_size={image_size} is not a multiple of the VAE's "
                       f"downsampling factor {f}")
    if self.cfg.in_channels % channels:
      raise ValueError(f"the VAE in {directory} takes {self.cfg.in_channels} channels; "
                       f"data.image_channels={channels} does not repeat into them")
    self.directory, self.channels = directory, channels
    self.latent_grid = (image_size // f, image_size // f, self.cfg.latent_channels)
    abstract = nnx.eval_shape(lambda: AutoencoderKL(self.cfg, rngs=nnx.Rngs(0)))
    self.graphdef, self._abstract_params = nnx.graphdef(abstract), nnx.state(abstract)

  def load_params(self):
    return nnx.state(load_vae(self.directory))

  def abstract_params(self):
    """The shapes and dtypes of load_params(), from the checkpoint's config alone."""
    return self._abstract_params

  def encode(self, params, frames):
    model, lead = nnx.merge(self.graphdef, params), frames.shape[:-3]
    x = to_signed(frames.reshape(-1, *frames.shape[-3:]))
    x = jnp.repeat(x, self.cfg.in_channels // self.channels, axis=-1)
    latents = model.to_diffusion(model.moments(x)[0])
    return latents.reshape(*lead, *latents.shape[1:])

  def decode(self, params, latents):
    model, lead = nnx.merge(self.graphdef, params), latents.shape[:-3]
    x = model.decode_raw(model.from_diffusion(latents.reshape(-1, *latents.shape[-3:])))
    x = x.reshape(*x.shape[:-1], self.channels, -1).mean(-1)     # RGB VAE, gray frames
    frames = to_uint8(x)
    return frames.reshape(*lead, *frames.shape[1:])
