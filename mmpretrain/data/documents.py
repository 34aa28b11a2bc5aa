"""Documents: ordered text and visual segments, built from records of each stream.

A document is what one training example means (a play excerpt, a caption followed by its
image, an image followed by its caption). Packing later lays documents into fixed rows.
"""
import dataclasses

import numpy as np
from PIL import Image

from mmpretrain.image_files import to_pil


@dataclasses.dataclass
class TextSegment:
  ids: np.ndarray          # int32[n]
  loss_mask: np.ndarray    # bool[n]: is this token a trained next-token target


@dataclasses.dataclass
class VisualSegment:
  frames: np.ndarray       # uint8[F, H, W, C]; each frame is its own attention block
  generate: bool           # noised and trained with the flow loss (else clean context)


Document = list  # list[TextSegment | VisualSegment]


class StreamDocument(list):
  """A document that knows its stream, so that packing can count each stream's tokens."""

  def __init__(self, segments, stream: str):
    super().__init__(segments)
    self.stream = stream


@dataclasses.dataclass
class Skipped:
  """Stands in for a record that could not become a document (counted, never trained)."""
  reason: str              # one of batch.SKIP_REASONS


def text_segment(ids, trained: bool | list[bool] = True) -> TextSegment:
  ids = np.asarray(ids, np.int32)
  mask = np.broadcast_to(np.asarray(trained, bool), ids.shape).copy()
  return TextSegment(ids, mask)


def fit_frame(frame: np.ndarray, size: int, channels: int) -> np.ndarray:
  """Pads (centered) or downsizes a uint8 [H, W, C] frame to [size, size, channels]."""
  if frame.ndim != 3:
    raise ValueError(f"frame must be [H, W, C], got shape {frame.shape}")
  if frame.shape[-1] != channels:
    mode = "L" if channels == 1 else "RGB"
    frame = np.asarray(to_pil(frame).convert(mode)).reshape(*frame.shape[:2], channels)
  h, w, _ = frame.shape
  if h <= size and w <= size:
    out = np.zeros((size, size, channels), np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = frame
    return out
  return np.asarray(to_pil(frame).resize((size, size), Image.BICUBIC)).reshape(size, size,
                                                                             channels)


def text_document(ids: list[int], bos: int, eos: int) -> Document:
  """A plain text document: <bos> text <eos>, every token after <bos> trained."""
  return [text_segment([bos] + list(ids) + [eos], [False] + [True] * (len(ids) + 1))]


def generation_document(caption_ids, frame, *, bos, eos, boi, eoi) -> Document:
  """Caption -> image: the image is noised and trained; <boi> is trained (when to draw)."""
  return [text_segment([bos] + list(caption_ids) + [boi], [False] + [True] * (len(caption_ids) + 1)),
          VisualSegment(frame[None], generate=True),
          # <eoi> follows an image deterministically (the sampler appends it), so it is not
          # a target; <eos> after it is.
          text_segment([eoi, eos], [False, True])]


def understanding_document(caption_ids, frame, *, bos, eos, boi, eoi) -> Document:
  """Image -> caption: the image is clean context, the caption is trained."""
  return [text_segment([bos, boi], False),
          VisualSegment(frame[None], generate=False),
          text_segment([eoi] + list(caption_ids) + [eos], [False] + [True] * (len(caption_ids) + 1))]


def vqa_document(question_ids, answer_ids, frame, *, bos, eos, boi, eoi) -> Document:
  """Image and question -> answer: only the answer and <eos> are trained, so fine-tuning
  teaches answering, not asking."""
  return [text_segment([bos, boi], False),
          VisualSegment(frame[None], generate=False),
          text_segment([eoi] + list(question_ids) + list(answer_ids) + [eos],
                       [False] * (1 + len(question_ids)) + [True] * (len(answer_ids) + 1))]


def video_document(frames, *, bos, eos, boi, eoi) -> Document:
  """A clip: every frame generated, each its own block (block-causal across frames)."""
  return [text_segment([bos, boi], False), VisualSegment(frames, generate=True),
          text_segment([eoi, eos], [False, True])]


def action_video_document(context, action_ids, next_frame, mission_ids=(), *, bos, eos, boi,
                          eoi) -> Document:
  """World modeling: [mission] clean context frames, the action as text, the next frame.

  Only the next frame is trained: the mission and the action are conditioning, written as
  text tokens as in the paper.
  """
  return [text_segment([bos] + list(mission_ids) + [boi], False),
          VisualSegment(context, generate=False),
          text_segment([eoi] + list(action_ids) + [boi], False),
          VisualSegment(next_frame[None], generate=True),
          text_segment([eoi, eos], [False, True])]


def document_length(doc: Document, tokens_per_frame: int) -> int:
  return sum(len(s.ids) if isinstance(s, TextSegment) else len(s.frames) * tokens_per_frame
             for s in doc)


def document_frames(doc: Document) -> int:
  return sum(len(s.frames) for s in doc if isinstance(s, VisualSegment))
