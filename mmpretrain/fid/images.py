"""Image folders read as pytorch-fid's fid_score reads them: the files directly in the
folder whose extension is one of IMAGE_EXTENSIONS (lower case, as its globs match), in
sorted order, each decoded by PIL and converted to RGB. Pixels stay uint8 [H, W, 3]; the
network divides by 255 as ToTensor does.
"""
import io

import numpy as np
from PIL import Image

from mmpretrain import storage

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


class UnreadableImageError(ValueError):
  """An image file PIL cannot decode; the message names it."""


def image_files(folder: str) -> list[str]:
  if not storage.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such folder (give a folder of images or a .npz "
                            "of FID statistics)")
  names = [n for n in storage.listdir(folder) if n.rpartition(".")[2] in IMAGE_EXTENSIONS]
  return [storage.join(folder, n) for n in names]


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3]: the file decoded whole (a truncated file fails here, not later)."""
  try:
    with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    reason = "not an image PIL recognizes" if isinstance(e, Image.UnidentifiedImageError) \
        else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise UnreadableImageError(f"{path}: cannot decode the image ({reason})") from e
