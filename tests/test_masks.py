"""The attention mask against a brute-force reference built from the documents themselves."""
import numpy as np
import pytest

from mmpretrain.batch import RowSpec
from mmpretrain.data.documents import TextSegment, VisualSegment, text_segment
from mmpretrain.data.packing import RowBuilder
from mmpretrain.model.masks import attention_mask, key_ranges, ranges_mask

T = 4  # tokens per frame
SPEC = RowSpec(seq_len=48, max_frames=6, tokens_per_frame=T, frame_shape=(2, 2, 1))


def frames(n):
  return np.zeros((n, 2, 2, 1), np.uint8)


def layout(docs):
  """Per position: (document number, frame number or None); padding is (None, None)."""
  out, frame_no = [], 0
  for d, doc in enumerate(docs):
    for seg in doc:
      if isinstance(seg, TextSegment):
        out += [(d, None)] * len(seg.ids)
      else:
        for _ in seg.frames:
          out += [(d, frame_no)] * T
          frame_no += 1
  return out + [(None, None)] * (SPEC.seq_len - len(out))


def brute_force_mask(docs):
  lay = layout(docs)
  n = len(lay)
  allowed = np.zeros((n, n), bool)
  for i in range(n):
    for j in range(n):
      (di, fi), (dj, fj) = lay[i], lay[j]
      if di is None or dj is None:
        allowed[i, j] = di is None and dj is None and j <= i   # padding sees padding
        continue
      same_frame = fi is not None and fi == fj
      allowed[i, j] = di == dj and (j <= i or same_frame)
  return allowed


CASES = {
    "packed text documents never see each other": [
        [text_segment(range(5))], [text_segment(range(7))], [text_segment(range(3))]],
    "an image is bidirectional inside, causal outside": [
        [text_segment(range(3)), VisualSegment(frames(1), True), text_segment(range(2))]],
    "back-to-back images are separate blocks": [
        [text_segment(range(2)), VisualSegment(frames(1), True), VisualSegment(frames(1), False),
         text_segment(range(2))]],
    "video frames are block-causal": [
        [text_segment(range(2)), VisualSegment(frames(3), True), text_segment(range(1))]],
    "images in different packed documents": [
        [VisualSegment(frames(1), False), text_segment(range(3))],
        [text_segment(range(2)), VisualSegment(frames(2), True)]],
}


@pytest.mark.parametrize("name", list(CASES))
def test_mask_matches_brute_force(name):
  docs = CASES[name]
  builder = RowBuilder(SPEC)
  for doc in docs:
    assert builder.fits(doc)
    builder.add(doc)
  row = builder.row
  mask = np.asarray(attention_mask(row["segment_ids"][None], row["block_ids"][None]))[0, 0]
  np.testing.assert_array_equal(mask, brute_force_mask(docs))
  np.testing.assert_array_equal(ranges_as_mask(row), brute_force_mask(docs))


def ranges_as_mask(row):
  """key_ranges of a packed row, as the [L, L] mask the dense kernels build from them."""
  ranges = key_ranges(row["segment_ids"][None], row["block_ids"][None])
  return np.asarray(ranges_mask(ranges, row["segment_ids"].shape[-1]))[0, 0]


@pytest.mark.parametrize("seed", range(20))
def test_key_ranges_equal_the_brute_force_mask_on_random_packings(seed):
  rng = np.random.default_rng(seed)
  builder, docs = RowBuilder(SPEC), []
  while True:
    doc = [text_segment(range(rng.integers(1, 6)))] if rng.random() < 0.5 else []
    for _ in range(rng.integers(0, 3)):
      doc.append(VisualSegment(frames(int(rng.integers(1, 3))), bool(rng.random() < 0.5)))
      if rng.random() < 0.5:
        doc.append(text_segment(range(rng.integers(1, 4))))
    if not doc or not builder.fits(doc):
      break
    builder.add(doc)
    docs.append(doc)
  np.testing.assert_array_equal(ranges_as_mask(builder.row), brute_force_mask(docs))


def test_mask_on_random_ids_matches_definition():
  rng = np.random.default_rng(0)
  seg = np.sort(rng.integers(0, 4, size=(3, 40)), axis=1).astype(np.int32)
  blk = (rng.integers(0, 3, size=(3, 40)) * (rng.random((3, 40)) < 0.5)).astype(np.int32)
  mask = np.asarray(attention_mask(seg, blk))[:, 0]
  for b in range(3):
    for i in range(40):
      for j in range(40):
        expected = seg[b, i] == seg[b, j] and (j <= i or (blk[b, i] == blk[b, j] > 0))
        assert mask[b, i, j] == expected, (b, i, j)


def test_every_row_of_the_mask_sees_something():
  builder = RowBuilder(SPEC)
  builder.add([text_segment(range(5))])
  row = builder.row
  mask = np.asarray(attention_mask(row["segment_ids"][None], row["block_ids"][None]))
  assert mask.any(axis=-1).all()   # no empty softmax rows, padding included
