"""A convolutional KL autoencoder — the architecture of diffusers' `AutoencoderKL` (Stable
Diffusion's VAE) — in Flax NNX, NHWC: the paper's VAE baseline for the unified model.

Encoder: conv_in, down blocks of ResNet blocks (with a stride-2 conv after all but the
last), a mid block (ResNet, single-head self-attention, ResNet), GroupNorm-SiLU-conv_out to
2·latent channels (mean, log-variance). Decoder: the mirror with nearest-neighbour
upsampling and one more ResNet block per level. Latents for diffusion are
(mean − shift_factor) · scaling_factor; `mmpretrain train-vae` trains one in-project
(<workdir>/representation), `vae_import.py` reads diffusers checkpoints and
`vae_representation.py` loads either as the unified model's representation.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain.encoders import store

EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  in_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  mid_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  scaling_factor: float = 1.0
  shift_factor: float = 0.0

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


def _conv(rngs, c_in, c_out, kernel=3, stride=1, padding="SAME"):
  return nnx.Conv(c_in, c_out, (kernel, kernel), strides=stride, padding=padding, rngs=rngs)


def _norm(rngs, channels, groups):
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=EPS, rngs=rngs)


class ResnetBlock(nnx.Module):
  def __init__(self, c_in: int, c_out: int, groups: int, *, rngs: nnx.Rngs):
    self.norm1, self.conv1 = _norm(rngs, c_in, groups), _conv(rngs, c_in, c_out)
    self.norm2, self.conv2 = _norm(rngs, c_out, groups), _conv(rngs, c_out, c_out)
    self.shortcut = _conv(rngs, c_in, c_out, kernel=1) if c_in != c_out else None

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x if self.shortcut is None else self.shortcut(x)) + h


class AttentionBlock(nnx.Module):
  """GroupNorm, then one-head self-attention over all positions, residual."""

  def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
    self.norm = _norm(rngs, channels, groups)
    self.q, self.k, self.v, self.out = (nnx.Linear(channels, channels, rngs=rngs)
                                        for _ in range(4))

  def __call__(self, x):
    b, h, w, c = x.shape
    t = self.norm(x).reshape(b, h * w, 1, c)           # [B, T, heads=1, C]
    out = jax.nn.dot_product_attention(self.q(t), self.k(t), self.v(t))
    return x + self.out(out.reshape(b, h, w, c))


class MidBlock(nnx.Module):
  def __init__(self, channels: int, groups: int, attention: bool, *, rngs: nnx.Rngs):
    self.resnet1 = ResnetBlock(channels, channels, groups, rngs=rngs)
    self.attention = AttentionBlock(channels, groups, rngs=rngs) if attention else None
    self.resnet2 = ResnetBlock(channels, channels, groups, rngs=rngs)

  def __call__(self, x):
    x = self.resnet1(x)
    return self.resnet2(x if self.attention is None else self.attention(x))


class Downsample(nnx.Module):
  """Zero-pad right and bottom by one, 3×3 conv with stride 2 (diffusers' padding=0 path)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = _conv(rngs, channels, channels, stride=2, padding="VALID")

  def __call__(self, x):
    return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = _conv(rngs, channels, channels)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
  """One resolution: ResNet blocks, then an optional down- or upsampler."""

  def __init__(self, c_in: int, c_out: int, num_blocks: int, groups: int, resample, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock(c_in if i == 0 else c_out, c_out, groups, rngs=rngs)
                             for i in range(num_blocks)])
    self.resample = resample(c_out, rngs=rngs) if resample else None

  def __call__(self, x):
    for block in self.resnets:
      x = block(x)
    return x if self.resample is None else self.resample(x)


class VAEEncoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    ch, g = cfg.block_out_channels, cfg.norm_num_groups
    self.conv_in = _conv(rngs, cfg.in_channels, ch[0])
    self.levels = nnx.List([
        Level(ch[max(i - 1, 0)], c, cfg.layers_per_block, g,
              Downsample if i < len(ch) - 1 else None, rngs=rngs) for i, c in enumerate(ch)])
    self.mid = MidBlock(ch[-1], g, cfg.mid_attention, rngs=rngs)
    self.norm_out = _norm(rngs, ch[-1], g)
    self.conv_out = _conv(rngs, ch[-1], 2 * cfg.latent_channels)

  def __call__(self, x):
    x = self.conv_in(x)
    for level in self.levels:
      x = level(x)
    return self.conv_out(jax.nn.silu(self.norm_out(self.mid(x))))


class VAEDecoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
    self.conv_in = _conv(rngs, cfg.latent_channels, ch[0])
    self.mid = MidBlock(ch[0], g, cfg.mid_attention, rngs=rngs)
    self.levels = nnx.List([
        Level(ch[max(i - 1, 0)], c, cfg.layers_per_block + 1, g,
              Upsample if i < len(ch) - 1 else None, rngs=rngs) for i, c in enumerate(ch)])
    self.norm_out = _norm(rngs, ch[-1], g)
    self.conv_out = _conv(rngs, ch[-1], cfg.in_channels)

  def __call__(self, z):
    x = self.mid(self.conv_in(z))
    for level in self.levels:
      x = level(x)
    return self.conv_out(jax.nn.silu(self.norm_out(x)))


class AutoencoderKL(nnx.Module):
  """Images in [-1, 1] [B, H, W, C] <-> latents [B, H/f, W/f, latent_channels]."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder, self.decoder = VAEEncoder(cfg, rngs=rngs), VAEDecoder(cfg, rngs=rngs)
    moments = 2 * cfg.latent_channels
    self.quant_conv = _conv(rngs, moments, moments, kernel=1) if cfg.use_quant_conv else None
    self.post_quant_conv = (_conv(rngs, cfg.latent_channels, cfg.latent_channels, kernel=1)
                            if cfg.use_post_quant_conv else None)

  def moments(self, images):
    """(mean, log-variance clamped to [-30, 20]) of the posterior."""
    h = self.encoder(images)
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode_raw(self, z):
    """Posterior-space latents -> images in about [-1, 1]."""
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def to_diffusion(self, z):
    return (z - self.cfg.shift_factor) * self.cfg.scaling_factor

  def from_diffusion(self, latents):
    return latents / self.cfg.scaling_factor + self.cfg.shift_factor


VAE_CONFIG = "vae.json"


def save_vae(directory: str, model: AutoencoderKL) -> None:
  """State first, vae.json last: the config file marks a complete directory."""
  store.save_with_config(directory, model, VAE_CONFIG, dataclasses.asdict(model.cfg))
