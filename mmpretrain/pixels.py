"""Pixels: uint8 frames <-> floats in [-1, 1] (what every network here reads and draws),
and PSNR. Pillow images and PNG bytes are in `image_files`."""
import jax.numpy as jnp

MSE_FLOOR = 1e-10          # identical images: a finite PSNR (100 dB at peak-to-peak 1)


def to_signed(frames) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return jnp.asarray(frames).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x) -> jnp.ndarray:
  """Floats in [-1, 1] (clipped) -> the nearest uint8 pixel values."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def psnr(mse, peak_to_peak: float) -> jnp.ndarray:
  """Peak signal-to-noise ratio (dB) of a mean squared error, for a signal whose range is
  `peak_to_peak` wide (2 for [-1, 1], 1 for [0, 1])."""
  return 10.0 * jnp.log10(peak_to_peak ** 2 / jnp.maximum(mse, MSE_FLOOR))


def signed_psnr(reconstruction, target) -> jnp.ndarray:
  """PSNR (dB) per image [..., H, W, C] of a [-1, 1] reconstruction (clipped) of `target`."""
  mse = jnp.mean((jnp.clip(reconstruction, -1, 1) - target) ** 2, axis=(-3, -2, -1))
  return psnr(mse, 2.0)
