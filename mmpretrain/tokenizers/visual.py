"""Visual representations: frames <-> continuous latent grids, and latent grid <-> tokens.

Every representation reports its latent grid shape and implements `encode(params, frames)
-> latents` and `decode(params, latents) -> frames` on [..., H, W, C] arrays, where `params`
(from `load_params()`) are its frozen weights, passed into jit as arguments
(`abstract_params()`: their shapes alone, for compiling without the weights). The unified
model only ever sees p×p patches of the grid. Raw pixels (no weights) are the paper's
baseline; the RAE (tokenizers/rae.py) is its best unified representation.
"""
import dataclasses

import einops
import jax.numpy as jnp

from mmpretrain.batch import RowSpec
from mmpretrain.pixels import to_signed, to_uint8


@dataclasses.dataclass(frozen=True)
class PixelRepresentation:
  """Pixels scaled to [-1, 1]: the latent grid is the image itself (paper's pixel baseline)."""
  image_size: int
  channels: int

  @property
  def latent_grid(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.channels)

  def load_params(self):
    return {}

  def abstract_params(self):
    return {}

  def encode(self, params, frames: jnp.ndarray) -> jnp.ndarray:
    del params
    return to_signed(frames)

  def decode(self, params, latents: jnp.ndarray) -> jnp.ndarray:
    del params
    return to_uint8(latents)


@dataclasses.dataclass(frozen=True)
class CachedLatents:
  """A representation whose training frames arrive as its own latents, computed once by
  `mmpretrain prepare` (data/latent_cache.py): float inputs pass through `encode`; uint8
  frames (prompts, evaluations) are still encoded by `inner`."""
  inner: object

  @property
  def latent_grid(self) -> tuple[int, int, int]:
    return self.inner.latent_grid

  def load_params(self):
    return self.inner.load_params()

  def abstract_params(self):
    return self.inner.abstract_params()

  def encode(self, params, frames: jnp.ndarray) -> jnp.ndarray:
    if frames.dtype == jnp.uint8:
      return self.inner.encode(params, frames)
    return frames.astype(jnp.float32)

  def decode(self, params, latents: jnp.ndarray) -> jnp.ndarray:
    return self.inner.decode(params, latents)


def make_representation(config):
  """Builds the representation named by config.visual.representation (wrapped in
  CachedLatents under config.visual.cached_latents)."""
  representation = _representation(config)
  return CachedLatents(representation) if config.visual.cached_latents else representation


def _representation(config):
  # rae and vae import this module's helpers, so they are imported here, on demand.
  # pylint: disable=import-outside-toplevel
  name, data = config.visual.representation, config.data
  if name == "pixels":
    return PixelRepresentation(data.image_size, data.image_channels)
  if name == "rae":
    from mmpretrain.tokenizers.rae import RAERepresentation
    return RAERepresentation(config.visual.checkpoint, data.image_size, data.image_channels)
  if name == "vae":
    from mmpretrain.tokenizers.vae_representation import VAERepresentation
    return VAERepresentation(config.visual.checkpoint, data.image_size, data.image_channels)
  raise ValueError(f"unknown visual.representation {name!r}")


def tokens_per_frame(latent_grid: tuple[int, int, int], patch_size: int) -> int:
  h, w, _ = latent_grid
  return (h // patch_size) * (w // patch_size)


def row_spec(config, latent_grid: tuple[int, int, int] | None = None) -> RowSpec:
  """The packed rows' layout: config.data's lengths and the latent grid's tokens per frame
  (default: the grid of the config's representation, which may read its checkpoint)."""
  latent_grid = latent_grid or make_representation(config).latent_grid
  data = config.data
  return RowSpec(seq_len=data.seq_len, max_frames=data.max_frames,
                 tokens_per_frame=tokens_per_frame(latent_grid, config.visual.patch_size),
                 frame_shape=(data.image_size, data.image_size, data.image_channels))


def patch_dim(latent_grid: tuple[int, int, int], patch_size: int) -> int:
  return patch_size * patch_size * latent_grid[2]


def patchify(latents: jnp.ndarray, p: int) -> jnp.ndarray:
  """[..., h, w, c] -> [..., (h/p)·(w/p), p·p·c], row-major over patches."""
  return einops.rearrange(latents, "... (h p) (w q) c -> ... (h w) (p q c)", p=p, q=p)


def unpatchify(tokens: jnp.ndarray, p: int, latent_grid: tuple[int, int, int]) -> jnp.ndarray:
  h, w, c = latent_grid
  return einops.rearrange(tokens, "... (h w) (p q c) -> ... (h p) (w q) c",
                          h=h // p, w=w // p, p=p, q=p, c=c)


# Latent-token layout of a packed row: frames' tokens [B, F·T, D] at their slots [B, L, D].


def frame_latent_tokens(representation, rep_params, frames, patch_size: int) -> jnp.ndarray:
  """uint8 frames [B, F, H, W, C] -> latent patch tokens [B, F·T, patch_dim]."""
  tokens = patchify(representation.encode(rep_params, frames), patch_size)
  b, f, t, d = tokens.shape
  return tokens.reshape(b, f * t, d)


def place_frame_tokens(frame_tokens, frame_slot) -> jnp.ndarray:
  """[B, F·T, D] frame tokens -> [B, L, D] at their slots (slot 0 where frame_slot < 0)."""
  return jnp.take_along_axis(frame_tokens, jnp.maximum(frame_slot, 0)[..., None], axis=1)
