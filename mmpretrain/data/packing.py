"""Packing documents into fixed-length rows: the batch contract (docs/architecture.md).

Text-only documents are concatenated and split across rows (each piece its own segment);
a document with visual segments is never split, so no image or frame is ever cut. A
document that can never fit (longer than a row, or more frames than a row holds) is
skipped and counted in the row's `skipped_too_long` field; `Skipped` records from the
streams are counted under their reason. A row also counts the tokens it took from each
stream (`stream_tokens_<stream>`, for documents that know theirs: StreamDocument).
"""
import grain
import ml_dtypes
import numpy as np

from mmpretrain.batch import (MODALITY_TEXT, MODALITY_VISUAL, SKIP_REASONS, STREAM_TOKEN_FIELDS,
                              RowSpec)
from mmpretrain.data.documents import (Document, Skipped, StreamDocument, TextSegment,
                                       document_frames, document_length)


# What a row's frames hold: pixels, or cached latents (ml_dtypes: numpy's bfloat16).
FRAME_DTYPES = {"uint8": np.uint8, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class RowBuilder:
  """Accumulates documents into the arrays of one row."""

  def __init__(self, spec: RowSpec):
    self.spec = spec
    L, F = spec.seq_len, spec.max_frames
    self.row = {
        "tokens": np.zeros(L, np.int32),
        "modality": np.zeros(L, np.int8),
        "segment_ids": np.zeros(L, np.int32),
        "block_ids": np.zeros(L, np.int32),
        "positions": np.zeros(L, np.int32),
        "text_loss_mask": np.zeros(L, bool),
        "visual_loss_mask": np.zeros(L, bool),
        "frame_slot": np.full(L, -1, np.int32),
        "frames": np.zeros((F, *spec.frame_shape), FRAME_DTYPES[spec.frame_dtype]),
        **{f"skipped_{reason}": np.zeros((), np.int32) for reason in SKIP_REASONS},
        **{field: np.zeros((), np.int32) for field in STREAM_TOKEN_FIELDS},
    }
    self.length = self.num_frames = self.num_segments = self.num_blocks = 0

  @property
  def space(self) -> int:
    return self.spec.seq_len - self.length

  def fits(self, doc: Document) -> bool:
    return (document_length(doc, self.spec.tokens_per_frame) <= self.space
            and self.num_frames + document_frames(doc) <= self.spec.max_frames)

  def add(self, doc: Document, stream: str | None = None) -> None:
    """Appends a whole document as a new segment (caller checked `fits`), counting its
    tokens to `stream` if given."""
    if stream is not None:
      self.row[f"stream_tokens_{stream}"] += document_length(doc, self.spec.tokens_per_frame)
    self.num_segments += 1
    row, pos, T = self.row, 0, self.spec.tokens_per_frame
    for seg in doc:
      if isinstance(seg, TextSegment):
        span = slice(self.length, self.length + len(seg.ids))
        row["tokens"][span] = seg.ids
        row["modality"][span] = MODALITY_TEXT
        row["text_loss_mask"][span] = seg.loss_mask
        n = len(seg.ids)
      else:
        for frame in seg.frames:
          if frame.shape != self.spec.frame_shape:
            raise ValueError(f"frame shape {frame.shape} != row frame shape "
                             f"{self.spec.frame_shape}")
          self.num_blocks += 1
          span = slice(self.length, self.length + T)
          row["frames"][self.num_frames] = frame
          row["frame_slot"][span] = self.num_frames * T + np.arange(T)
          row["modality"][span] = MODALITY_VISUAL
          row["block_ids"][span] = self.num_blocks
          row["visual_loss_mask"][span] = seg.generate
          row["segment_ids"][span] = self.num_segments
          row["positions"][span] = pos + np.arange(T)
          self.num_frames += 1
          self.length += T
          pos += T
        continue
      row["segment_ids"][span] = self.num_segments
      row["positions"][span] = pos + np.arange(n)
      self.length += n
      pos += n


def split_text_document(doc: Document, n: int) -> tuple[Document, Document]:
  """Splits a text-only document after its first n tokens."""
  ids = np.concatenate([s.ids for s in doc])
  mask = np.concatenate([s.loss_mask for s in doc])
  return [TextSegment(ids[:n], mask[:n])], [TextSegment(ids[n:], mask[n:])]


def is_text_only(doc: Document) -> bool:
  return all(isinstance(s, TextSegment) for s in doc)


class PackIterDataset(grain.IterDataset):
  """Documents -> packed rows (dicts of numpy arrays, one per batch-contract field)."""

  def __init__(self, parent: grain.IterDataset, spec: RowSpec):
    super().__init__(parent)
    self.spec = spec

  def __iter__(self):
    return PackIterator(self._parent.__iter__(), self.spec)


class PackIterator(grain.DatasetIterator):
  """Checkpointable packer.

  State is taken between rows: the parent's state before the document in progress (the
  "carry") plus how many of its tokens earlier rows consumed. Documents are deterministic
  functions of the parent position, so re-reading the carry restores the exact stream.
  """

  def __init__(self, parent: grain.DatasetIterator, spec: RowSpec):
    super().__init__(parent)
    self.spec = spec
    self._carry: Document | None = None
    self._carry_state = None
    self._offset = 0

  def _read_next(self) -> bool:
    self._carry_state = self._parent.get_state()
    try:
      self._carry = next(self._parent)
    except StopIteration:
      self._carry = None
      return False
    self._offset = 0
    return True

  def _skip_reason(self, doc) -> str | None:
    if isinstance(doc, Skipped):
      return doc.reason
    length = document_length(doc, self.spec.tokens_per_frame)
    if length == 0:
      return "empty"
    if document_frames(doc) > self.spec.max_frames or (
        not is_text_only(doc) and length > self.spec.seq_len):
      return "too_long"
    return None

  def __next__(self):
    builder = RowBuilder(self.spec)
    while True:
      if self._carry is None and not self._read_next():
        if builder.length == 0:
          raise StopIteration
        break
      doc = self._carry
      reason = self._skip_reason(doc)
      if reason:
        builder.row[f"skipped_{reason}"] += 1
        self._carry = None
        continue
      stream = doc.stream if isinstance(doc, StreamDocument) else None
      if self._offset:
        doc = split_text_document(doc, self._offset)[1]
      if builder.fits(doc):
        builder.add(doc, stream)
        self._carry = None
        if builder.space == 0:
          break
        continue
      if is_text_only(doc) and builder.space > 0:
        head, _ = split_text_document(doc, builder.space)
        self._offset += builder.space
        builder.add(head, stream)
      break   # the row is full, or the next document needs a fresh row
    return builder.row

  def get_state(self):
    if self._carry is None:
      return {"parent": self._parent.get_state(), "offset": -1}
    return {"parent": self._carry_state, "offset": self._offset}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._carry = None
    if state["offset"] >= 0:
      self._read_next()
      self._offset = state["offset"]
