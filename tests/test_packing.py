"""Packing and batches: the batch contract, no split images, skip counts, seeds, shards.

Four-stream behaviour (mixture ratios, resumption, bad records) is in test_streams.py.
"""
import grain
import numpy as np
import pytest

from mmpretrain.batch import MODALITY_PAD, MODALITY_TEXT, MODALITY_VISUAL, RowSpec
from mmpretrain.data import documents
from mmpretrain.data.packing import PackIterDataset
from mmpretrain.data.pipeline import make_batches
from mmpretrain.tokenizers.visual import row_spec


def test_rows_follow_the_batch_contract(config, tokenizer):
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  spec = row_spec(config)
  B, L = config.data.batch_size, config.data.seq_len
  assert batch["tokens"].shape == (B, L)
  assert batch["frames"].shape == (B, spec.max_frames, *spec.frame_shape)
  for b in range(B):
    seg, blk, mod = batch["segment_ids"][b], batch["block_ids"][b], batch["modality"][b]
    slot, pos = batch["frame_slot"][b], batch["positions"][b]
    assert np.all((seg == 0) == (mod == MODALITY_PAD))
    assert np.all(np.diff(seg[seg > 0]) >= 0)                  # documents are contiguous
    assert np.all((slot >= 0) == (mod == MODALITY_VISUAL))
    assert np.all((blk > 0) == (mod == MODALITY_VISUAL))
    assert not np.any(batch["text_loss_mask"][b] & (mod != MODALITY_TEXT))
    assert not np.any(batch["visual_loss_mask"][b] & (mod != MODALITY_VISUAL))
    for s in np.unique(seg[seg > 0]):                           # positions restart per document
      np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
    for k in np.unique(blk[blk > 0]):                           # a block is one whole frame
      where = np.flatnonzero(blk == k)
      assert len(where) == spec.tokens_per_frame
      assert np.all(np.diff(where) == 1) and len(np.unique(seg[where])) == 1
      frame = slot[where] // spec.tokens_per_frame
      assert len(np.unique(frame)) == 1
      np.testing.assert_array_equal(slot[where] % spec.tokens_per_frame,
                                    np.arange(spec.tokens_per_frame))


def test_frames_in_rows_are_the_documents_images(config, tokenizer):
  config.data.mixture = {"image_text": 1.0}
  config.data.streams.image_text.caption_dropout = 0.0
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  spec = row_spec(config)
  digits = set()
  for b in range(config.data.batch_size):
    for k in np.unique(batch["block_ids"][b][batch["block_ids"][b] > 0]):
      frame = batch["frame_slot"][b][batch["block_ids"][b] == k][0] // spec.tokens_per_frame
      assert batch["frames"][b, frame].max() > 0               # a real digit, not padding
      digits.add(batch["frames"][b, frame].tobytes())
  assert len(digits) >= config.data.batch_size                  # distinct images


def _docs(lengths_and_frames):
  out = []
  for n_text, n_frames in lengths_and_frames:
    doc = [documents.text_segment(np.arange(1, n_text + 1))]
    if n_frames:
      doc.append(documents.VisualSegment(np.ones((n_frames, 2, 2, 1), np.uint8), True))
    out.append(doc)
  return out


SPEC = RowSpec(seq_len=16, max_frames=2, tokens_per_frame=4, frame_shape=(2, 2, 1))


def _pack(docs):
  ds = grain.MapDataset.source(docs).to_iter_dataset()
  return list(PackIterDataset(ds, SPEC))


def test_visual_documents_are_never_split_and_text_is():
  rows = _pack(_docs([(10, 0), (3, 1), (20, 0)]))
  # Row 0: 10 text + the 7-token image doc does not fit in 6 -> new row; text fills the rest.
  assert [int((r["segment_ids"] > 0).sum()) for r in rows] == [10, 16, 11]
  assert (rows[1]["modality"] == MODALITY_VISUAL).sum() == 4
  total_text = sum(int((r["modality"] == MODALITY_TEXT).sum()) for r in rows)
  assert total_text == 10 + 3 + 20                              # no token lost


def test_oversized_documents_are_skipped_and_counted():
  rows = _pack(_docs([(14, 1), (2, 3), (0, 0), (4, 0)]))
  assert sum(int(r["skipped_too_long"]) for r in rows) == 2    # too long, too many frames
  assert sum(int(r["skipped_empty"]) for r in rows) == 1
  assert int((rows[0]["segment_ids"] > 0).sum()) == 4           # only the 4-token doc


def test_same_seed_same_batches_and_other_seed_differs(config, tokenizer):
  spec = row_spec(config)
  a, b = next(make_batches(config, tokenizer, spec)), next(make_batches(config, tokenizer, spec))
  c = next(make_batches(config, tokenizer, spec, seed=123))
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert not np.array_equal(a["tokens"], c["tokens"])


def test_data_shards_are_disjoint_and_a_process_loads_whole_shards(config, tokenizer):
  config.data.mixture = {"image_text": 1.0}
  config.data.shards = 2
  half = config.data.batch_size // 2
  whole = next(make_batches(config, tokenizer, row_spec(config)))
  shards = [next(make_batches(config, tokenizer, row_spec(config),
                              rows=range(i * half, (i + 1) * half)))
            for i in range(2)]
  for key in whole:         # the global batch is the shards' rows in shard order
    np.testing.assert_array_equal(whole[key], np.concatenate([s[key] for s in shards]))
  images = [{f.tobytes() for row in s["frames"] for f in row if f.any()} for s in shards]
  assert images[0] and images[1] and not images[0] & images[1]
  with pytest.raises(ValueError, match="whole shards: set data.shards"):
    make_batches(config, tokenizer, row_spec(config), rows=range(1, half))
