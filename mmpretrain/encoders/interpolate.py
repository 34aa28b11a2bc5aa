"""Resizing position-embedding grids exactly as the reference PyTorch encoders do.

SigLIP resizes with `F.interpolate(mode="bicubic", align_corners=False)` (Keys cubic,
a = -0.75, edge-clamped taps); DINOv2 adds `antialias=True` (a = -0.5, the kernel stretched
by the downscale factor and renormalized, as in PIL). Both are separable, so a resize is two
small matrices built here in float64 and applied with matmuls under jit.
"""
import numpy as np

MODES = ("bicubic", "bicubic_antialias")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _bicubic(in_size: int, out_size: int) -> np.ndarray:
  scale = in_size / out_size
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    source = (i + 0.5) * scale - 0.5
    base = int(np.floor(source))
    for tap in range(base - 1, base + 3):
      matrix[i, min(max(tap, 0), in_size - 1)] += _cubic(np.array(source - tap), -0.75)
  return matrix


def _bicubic_antialias(in_size: int, out_size: int) -> np.ndarray:
  scale = in_size / out_size
  stretch = max(scale, 1.0)                  # widen the kernel only when shrinking
  support = 2.0 * stretch
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    weights = _cubic((taps - center + 0.5) / stretch, -0.5)
    matrix[i, lo:hi] = weights / weights.sum()
  return matrix


def resize_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
  """[out_size, in_size] float64 matrix M with resized = M @ original along one axis."""
  if mode not in MODES:
    raise ValueError(f"unknown interpolation {mode!r}: use one of {MODES}")
  if in_size == out_size:
    return np.eye(in_size)
  return _bicubic(in_size, out_size) if mode == "bicubic" else _bicubic_antialias(in_size,
                                                                                  out_size)
