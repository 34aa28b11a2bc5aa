"""Bilinear resizing as torch's `F.interpolate(mode='bilinear', align_corners=False)`
computes it, which pytorch-fid applies before its Inception.

jax.image.resize is not that by default: it antialiases when shrinking (torch does not
unless told to), so a resize from a larger image differs outright. torch's formula: output
pixel i of n reads input coordinate (i + 0.5) * in/n - 0.5, clamped at 0, and mixes the
two pixels around it; the last input pixel stands in for the one past the edge. The scale
in/n is a float32 and the coordinate is rounded to float32 once, as the multiply-add
torch's kernels compile to rounds it (on x86 with FMA and on CUDA).
"""
import jax.numpy as jnp
import numpy as np


def source_pixels(size_in: int, size_out: int):
  """(first, second, weight_first, weight_second) per output pixel along one axis, in
  torch's arithmetic."""
  scale = np.float64(np.float32(size_in) / np.float32(size_out))
  # Exact in float64 (a float32 times a half-integer), then one rounding to float32.
  source = ((np.arange(size_out) + 0.5) * scale - 0.5).astype(np.float32)
  source = np.maximum(source, np.float32(0))
  first = source.astype(np.int64)                     # truncation: source is non-negative
  second = np.minimum(first + 1, size_in - 1)
  weight_second = (source - first.astype(np.float32)).astype(np.float32)
  return first, second, np.float32(1) - weight_second, weight_second


def _along(x, axis: int, size_out: int):
  first, second, weight_first, weight_second = source_pixels(x.shape[axis], size_out)
  shape = [1] * x.ndim
  shape[axis] = size_out
  return (jnp.take(x, first, axis=axis) * weight_first.reshape(shape)
          + jnp.take(x, second, axis=axis) * weight_second.reshape(shape))


def resize_bilinear(images, height: int, width: int):
  """float [B, H, W, C] -> [B, height, width, C]: the width mixed first, then the height,
  in the order torch sums the four pixels."""
  return _along(_along(images, 2, width), 1, height)
