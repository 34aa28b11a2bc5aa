"""The four-stream pipeline: mixture ratios, packing fidelity, resumption, sharding, bad data."""
import io

import numpy as np
import pytest
from PIL import Image

from conftest import all_streams_config, assert_resumes_identically
from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL
from mmpretrain.data import documents, pipeline
from mmpretrain.data.documents import Skipped, TextSegment, VisualSegment
from mmpretrain.data.packing import PackIterDataset
from mmpretrain.tokenizers.visual import row_spec

from fixtures.broken_captions import BrokenCaptions


def stream_of(doc) -> str:
  """Which stream made a document, read off its structure (see data/documents.py)."""
  if isinstance(doc, Skipped):
    return "skipped"
  visual = [s for s in doc if isinstance(s, VisualSegment)]
  if not visual:
    return "text"
  if len(visual) == 2:
    return "action_video"
  return "video" if len(visual[0].frames) > 1 else "image_text"


@pytest.fixture
def config4(data_dir):
  return all_streams_config(data_dir)


def test_realized_mixture_matches_weights(config4, tokenizer):
  docs = pipeline.document_mixture(config4, tokenizer, "train", seed=0)
  kinds = [stream_of(docs[i]) for i in range(10_000)]
  for stream, weight in config4.data.mixture.items():
    assert kinds.count(stream) / len(kinds) == pytest.approx(weight, abs=0.02), stream


def test_stream_weights_inside_mixture_and_zero_weights(config4, tokenizer):
  config4.data.mixture = {"text": 0.0, "image_text": 0.0, "video": 1.0, "action_video": 3.0}
  docs = pipeline.document_mixture(config4, tokenizer, "train", seed=0)
  kinds = [stream_of(docs[i]) for i in range(4000)]
  assert set(kinds) == {"video", "action_video"}
  assert kinds.count("action_video") / len(kinds) == pytest.approx(0.75, abs=0.02)


def _visual_segments_of_rows(rows, tokens_per_frame):
  """Per packed visual document: (text ids, frames, generate flags), in row order."""
  out = []
  for row in rows:
    for seg in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
      where = row["segment_ids"] == seg
      if not (row["modality"][where] == MODALITY_VISUAL).any():
        continue
      blocks = row["block_ids"][where]
      frames, generate = [], []
      for block in np.unique(blocks[blocks > 0]):
        slots = row["frame_slot"][row["block_ids"] == block]
        assert len(slots) == tokens_per_frame                     # never split
        assert np.all(np.diff(np.flatnonzero(row["block_ids"] == block)) == 1)
        assert (slots == slots[0] + np.arange(tokens_per_frame)).all()
        frames.append(row["frames"][slots[0] // tokens_per_frame])
        generate.append(bool(row["visual_loss_mask"][row["block_ids"] == block].all()))
      text = row["tokens"][where & (row["modality"] == MODALITY_TEXT)]
      out.append((text, np.stack(frames), generate))
  return out


def test_packed_rows_reproduce_the_visual_documents(config4, tokenizer):
  spec = row_spec(config4)
  docs = pipeline.document_mixture(config4, tokenizer, "train", seed=0)[:300]
  rows = list(PackIterDataset(docs.to_iter_dataset(), spec))
  packed = _visual_segments_of_rows(rows, spec.tokens_per_frame)
  expected = [d for d in (docs[i] for i in range(300)) if stream_of(d) not in ("text", "skipped")]
  assert len(packed) == len(expected) > 100
  for (text, frames, generate), doc in zip(packed, expected):
    np.testing.assert_array_equal(
        text, np.concatenate([s.ids for s in doc if isinstance(s, TextSegment)]))
    np.testing.assert_array_equal(
        frames, np.concatenate([s.frames for s in doc if isinstance(s, VisualSegment)]))
    assert generate == [s.generate for s in doc if isinstance(s, VisualSegment)
                        for _ in s.frames]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_iterator_state_resumes_mid_epoch(config4, tokenizer, num_workers):
  config4.data.num_workers = num_workers
  it = pipeline.make_batches(config4, tokenizer, row_spec(config4))
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  assert_resumes_identically(config4, tokenizer, state, expected)


def test_two_processes_read_disjoint_shards_that_cover_the_split(config4, tokenizer):
  config4.data.mixture = {"text": 0.0, "image_text": 1.0, "video": 0.0, "action_video": 0.0}
  config4.data.streams.image_text.datasets = {"mnist_captions": 1.0, "emoji_captions": 0.0}
  count = len(pipeline.dataset_records(config4, "mnist_captions", "validation"))
  seen = []
  for index in range(2):        # one epoch of each process's shard
    docs = pipeline.document_mixture(config4, tokenizer, "validation", 0, shard=(index, 2))
    seen.append({s.frames.tobytes() for i in range(count // 2) for s in docs[i]
                 if isinstance(s, VisualSegment)})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == len({documents.fit_frame(
      np.asarray(Image.open(io.BytesIO(r["image"])))[..., None], 16, 3).tobytes()
      for r in pipeline.dataset_records(config4, "mnist_captions", "validation")})


def test_bad_records_are_skipped_and_counted(config4, tokenizer, tmp_path):
  BrokenCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config4.data.datasets.broken = {
      "tfds_name": "broken_captions", "data_dir": str(tmp_path), "version": "",
      "train_split": "train", "eval_split": "train",
      "fields": {"image": "png", "caption": "alt_text"}}
  config4.data.mixture = {"text": 0.0, "image_text": 1.0, "video": 0.0, "action_video": 0.0}
  config4.data.streams.image_text.datasets = {"broken": 1.0}
  config4.data.streams.image_text.generation_ratio = 0.0     # understanding: needs a caption
  config4.data.batch_size = 2
  batches = pipeline.make_batches(config4, tokenizer, row_spec(config4))
  skipped = {"corrupt": 0, "empty": 0}
  frames_seen = 0
  for _ in range(10):          # 10 epochs of 5 records: 2 good docs per epoch
    batch = next(batches)
    for reason in skipped:
      skipped[reason] += int(batch[f"skipped_{reason}"].sum())
    frames_seen += int((batch["block_ids"].max(axis=1)).sum())
  assert skipped["corrupt"] >= 2 * 9 and skipped["empty"] >= 9   # two corrupt, one empty
  assert skipped["corrupt"] == 2 * skipped["empty"]
  assert frames_seen > 0


def test_a_dataset_without_the_streams_fields_says_how_to_map_them(config4, tokenizer):
  config4.data.datasets.mnist_captions.fields = {"image": "pixels", "caption": "caption"}
  config4.data.streams.image_text.datasets = {"mnist_captions": 1.0, "emoji_captions": 0.0}
  docs = pipeline.stream_documents(config4, tokenizer, "image_text", "train", 0)
  with pytest.raises(KeyError, match="config.data.datasets.mnist_captions.fields"):
    docs[0]   # pylint: disable=pointless-statement


def test_data_shard_states_restore_onto_another_process_count(config4, tokenizer, tmp_path):
  """Saved by one process loading both shards, restored by two processes loading one each:
  together they continue with the batch the one process would have made next."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from mmpretrain.train import checkpoint  # pylint: disable=import-outside-toplevel
  config4.data.shards = 2
  it = pipeline.make_batches(config4, tokenizer, row_spec(config4))
  next(it)
  handlers = {"data": checkpoint.DataShardsHandler()}
  with ocp.CheckpointManager(tmp_path / "ckpt", item_handlers=handlers) as manager:
    manager.save(1, args=ocp.args.Composite(data=checkpoint.DataShardsSave(it)))
    manager.wait_until_finished()
    want = next(it)
    half = config4.data.batch_size // 2
    parts = []
    for rows in (range(0, half), range(half, 2 * half)):
      resumed = pipeline.make_batches(config4, tokenizer, row_spec(config4), rows=rows)
      manager.restore(1, args=ocp.args.Composite(data=checkpoint.DataShardsRestore(resumed)))
      parts.append(next(resumed))
    config4.data.shards = 1
    with pytest.raises(checkpoint.DataShardsMismatch,
                       match="saved with data.shards=2, this run has 1"):
      manager.restore(1, args=ocp.args.Composite(data=checkpoint.DataShardsRestore(
          pipeline.make_batches(config4, tokenizer, row_spec(config4)))))
  for key in want:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key],
                                  err_msg=key)
