"""Synthetic packed batches with a chosen text/image layout (benchmarks, shape tests).

Rows are built by the real RowBuilder, so they are exactly the batch contract.
"""
import numpy as np

from mmpretrain.batch import DEVICE_FIELDS
from mmpretrain.data.documents import VisualSegment, text_segment
from mmpretrain.data.packing import RowBuilder


def interleaved_batch(spec, batch_size: int, text_tokens: int, images: int, vocab_size: int,
                      seed: int = 0) -> dict:
  """Each row: one document of `text_tokens` random ids with `images` generated images
  spread evenly between its text runs."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(batch_size):
    runs = np.array_split(rng.integers(4, vocab_size, text_tokens), images + 1)
    doc = [text_segment(runs[0])] if len(runs[0]) else []
    for run in runs[1:]:
      frame = rng.integers(0, 256, (1, *spec.frame_shape), dtype=np.uint8)
      doc.append(VisualSegment(frame, generate=True))
      if len(run):
        doc.append(text_segment(run))
    builder = RowBuilder(spec)
    if not builder.fits(doc):
      raise ValueError(f"{text_tokens} text tokens + {images} images do not fit {spec}")
    builder.add(doc)
    rows.append(builder.row)
  return {k: np.stack([r[k] for r in rows]) for k in DEVICE_FIELDS}
