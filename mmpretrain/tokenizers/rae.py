"""Representation Autoencoder (Zheng et al., 2025): a frozen semantic encoder's patch tokens,
normalized per channel with statistics of the data, are the latents; a ViT decoder trained
on noise-augmented latents maps them back to pixels.

The directory `mmpretrain train-rae` writes (<workdir>/representation) holds `rae.json`
(encoder and decoder configs) and the whole module's state (encoder, decoder, statistics),
so a unified-model run needs nothing else.
"""
import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmpretrain import storage
from mmpretrain.pixels import to_uint8
from mmpretrain.encoders import store
from mmpretrain.encoders.vit import Block, ViTConfig, VisionTransformer, normalize, normalize_unit

RAE_CONFIG = "rae.json"


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  grid: int                 # latent tokens per side (the encoder's patch grid)
  latent_dim: int           # encoder width
  image_size: int           # reconstructed frames are image_size² × channels
  channels: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int

  @property
  def patch_size(self) -> int:
    return self.image_size // self.grid


class ViTDecoder(nnx.Module):
  """Latent tokens [B, grid², latent_dim] -> pixels [B, image_size, image_size, C] in [-1, 1]
  (unbounded; the representation clips when quantizing)."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = nnx.initializers.truncated_normal(0.02)
    self.embed = nnx.Linear(cfg.latent_dim, cfg.width, kernel_init=init, rngs=rngs)
    self.pos_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.grid ** 2, cfg.width)) * 0.02)
    block_cfg = ViTConfig(image_size=cfg.grid, patch_size=1, width=cfg.width, depth=cfg.depth,
                          num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    self.blocks = nnx.List([Block(block_cfg, dtype=jnp.float32, rngs=rngs)
                            for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(cfg.width, epsilon=block_cfg.layer_norm_eps, rngs=rngs)
    self.out = nnx.Linear(cfg.width, cfg.patch_size ** 2 * cfg.channels, kernel_init=init,
                          rngs=rngs)

  def __call__(self, latents):
    x = self.embed(latents) + self.pos_embed[...]
    for block in self.blocks:
      x = block(x)
    p, g = self.cfg.patch_size, self.cfg.grid
    return einops.rearrange(self.out(self.norm(x)), "b (h w) (p q c) -> b (h p) (w q) c",
                            h=g, w=g, p=p, q=p)


class LatentStats(nnx.Variable):
  """Per-channel latent statistics: saved with the RAE, never trained."""


class RAE(nnx.Module):
  """Frozen encoder + per-channel normalization + trained decoder. With a decoder whose
  latent_dim is below the encoder's width, the latents are the leading principal channels
  of the normalized tokens, whitened (`projection`, set by the RAE stage)."""

  def __init__(self, encoder: VisionTransformer, decoder_cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.encoder = encoder
    self.decoder = ViTDecoder(decoder_cfg, rngs=rngs)
    width, channels = encoder.cfg.width, decoder_cfg.latent_dim
    self.mean = LatentStats(jnp.zeros((width,)))
    self.std = LatentStats(jnp.ones((width,)))
    self.projection = (LatentStats(jnp.eye(width, channels)) if channels < width else None)

  def tokens(self, images):
    """Encoder inputs [B, H, W, C] -> normalized latent tokens [B, grid², latent_dim]."""
    raw = jax.lax.stop_gradient(self.encoder(images)["tokens"])
    normalized = (raw - self.mean[...]) / self.std[...]
    return normalized if self.projection is None else normalized @ self.projection[...]

  def encode(self, frames):
    """uint8 frames [B, H, W, C] -> normalized latent tokens."""
    return self.tokens(normalize(frames, self.encoder.cfg))

  def encode_unit(self, images):
    """Images in [0, 1] (e.g. reconstructions, for a perceptual loss) -> latent tokens."""
    return self.tokens(normalize_unit(images, self.encoder.cfg))

  def decode(self, latents):
    return self.decoder(latents)


def decoder_config(config, encoder_cfg: ViTConfig) -> DecoderConfig:
  decoder = config.rae.decoder
  grid = encoder_cfg.grid
  if config.rae.latent_channels > encoder_cfg.width:
    raise ValueError(f"rae.latent_channels={config.rae.latent_channels} exceeds the encoder's "
                     f"{encoder_cfg.width} channels: use at most {encoder_cfg.width} (0: all)")
  if config.data.image_size % grid:
    raise ValueError(f"data.image_size={config.data.image_size} is not a multiple of the "
                     f"encoder's {grid}×{grid} token grid: the decoder emits whole patches")
  return DecoderConfig(grid=grid, latent_dim=config.rae.latent_channels or encoder_cfg.width,
                       image_size=config.data.image_size,
                       channels=config.data.image_channels, width=decoder.width,
                       depth=decoder.depth, num_heads=decoder.num_heads, mlp_dim=decoder.mlp_dim)


def save_rae(directory: str, rae: RAE) -> None:
  """State first, rae.json last: the config file marks a complete directory."""
  store.save_with_config(directory, rae, RAE_CONFIG,
                         {"kind": "rae", "encoder": dataclasses.asdict(rae.encoder.cfg),
                          "decoder": dataclasses.asdict(rae.decoder.cfg)})


def _configs(directory: str) -> tuple[ViTConfig, DecoderConfig]:
  path = storage.join(directory, RAE_CONFIG)
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} not found: set config.visual.checkpoint to the "
                            "<workdir>/representation that `mmpretrain train-rae` wrote")
  saved = storage.read_json(path)
  encoder = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["encoder"].items()}
  return ViTConfig(**encoder), DecoderConfig(**saved["decoder"])


def encoder_config(directory: str) -> ViTConfig:
  """The encoder of an encoder directory (store.encoder_config) or the one an RAE directory
  describes (its rae.json: configs/paper/rae_so400m_224 holds the shapes alone, which is
  what compiling the RAE stage needs)."""
  if storage.exists(storage.join(directory, RAE_CONFIG)):
    return _configs(directory)[0]
  return store.encoder_config(directory)


@functools.lru_cache(maxsize=8)
def _abstract_rae(encoder_cfg: ViTConfig, decoder_cfg: DecoderConfig):
  """(graphdef, abstract state) of an RAE. Cached: tracing a So400m's construction takes
  ~17 s (each of its ~1,000 RNG draws walks the trace so far), and a compile report builds
  the same representation for every one of its compiles."""
  return nnx.split(nnx.eval_shape(lambda: RAE(VisionTransformer(encoder_cfg,
                                                                rngs=nnx.Rngs(0)),
                                                decoder_cfg, rngs=nnx.Rngs(0))))


def load_rae(directory: str) -> RAE:
  return store.restore_module(directory, nnx.merge(*_abstract_rae(*_configs(directory))))


class RAERepresentation:
  """The unified model's view of an RAE: latent grid (grid, grid, width); `params` is the
  RAE's state, passed into jit as an argument (never baked in as constants)."""

  def __init__(self, directory: str, image_size: int, channels: int):
    encoder_cfg, decoder_cfg = _configs(directory)
    if (decoder_cfg.image_size, decoder_cfg.channels) != (image_size, channels):
      raise ValueError(f"the RAE in {directory} reconstructs {decoder_cfg.image_size}² × "
                       f"{decoder_cfg.channels} frames but data.image_size={image_size}, "
                       f"data.image_channels={channels}: train an RAE for these frames")
    self.directory = directory
    self.latent_grid = (decoder_cfg.grid, decoder_cfg.grid, decoder_cfg.latent_dim)
    self.graphdef, self._abstract_params = _abstract_rae(encoder_cfg, decoder_cfg)

  def load_params(self):
    return nnx.state(load_rae(self.directory))

  def abstract_params(self):
    """The shapes and dtypes of load_params(), read from rae.json alone."""
    return self._abstract_params

  def encode(self, params, frames):
    """uint8 frames [..., H, W, C] -> latents [..., grid, grid, width]."""
    rae, lead = nnx.merge(self.graphdef, params), frames.shape[:-3]
    tokens = rae.encode(frames.reshape(-1, *frames.shape[-3:]))
    g, _, d = self.latent_grid
    return tokens.reshape(*lead, g, g, d)

  def decode(self, params, latents):
    """latents [..., grid, grid, width] -> uint8 frames."""
    rae, lead = nnx.merge(self.graphdef, params), latents.shape[:-3]
    pixels = rae.decode(latents.reshape(-1, np.prod(latents.shape[-3:-1]), latents.shape[-1]))
    pixels = to_uint8(pixels)
    return pixels.reshape(*lead, *pixels.shape[1:])
