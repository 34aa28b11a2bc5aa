"""uint8 frames <-> Pillow images and PNG bytes, with numpy and Pillow only: dataset
conversion workers import this, and each would pay a second to start if it imported JAX."""
import io

import numpy as np
from PIL import Image


def to_pil(frame) -> Image.Image:
  """uint8 [H, W, C] (C = 1: grayscale, 3: RGB) or [H, W] -> a Pillow image."""
  frame = np.asarray(frame)
  return Image.fromarray(frame[..., 0] if frame.ndim == 3 and frame.shape[-1] == 1 else frame)


def png_bytes(frame) -> bytes:
  buffer = io.BytesIO()
  to_pil(frame).save(buffer, "PNG")
  return buffer.getvalue()
