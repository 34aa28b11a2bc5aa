"""Train on your own files: `mmpretrain prepare` converts them into sharded TFDS datasets
(array_record) under data_dir with an Apache Beam pipeline, counting corrupt records: on
this machine by Beam's local runner (`source.workers` processes), on a cluster with
`--runner=DataflowRunner` (or Flink, Spark) and its options after `--` (docs/data.md).

Each dataset below has a `source` (every key of data/convert/options.py, so any of them
can be overridden): JSON-lines text (plain, .gz, .zst or .bz2), webdataset tar shards of
captioned images, mp4/webm clips listed with captions, and .npz episodes of frames and
continuous actions (written as text, e.g. `t+0.25s dx=+0.12 dy=-0.03 dyaw=+0.10`). Point
the globs at your files:

  mmpretrain prepare --config=configs/examples/own_corpus.py \\
      --config.data.datasets.my_text.source.train='/corpus/text/*.jsonl.gz'
  mmpretrain train --config=configs/examples/own_corpus.py --workdir=runs/own_corpus

A gs:// data_dir works the same (workers write the shards there directly).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import base  # pylint: disable=wrong-import-position
from mmpretrain.data.convert import SOURCE_DEFAULTS  # pylint: disable=wrong-import-position

FIELDS = {"text": {"text": "text"}, "image_text": {"image": "image", "caption": "caption"},
          "video": {"frames": "frames", "fps": "fps"},
          "action_video": {"frames": "frames", "actions": "actions", "mission": "mission"}}
SOURCES = {
    "text": ("my_text", {"format": "jsonl", "train": "corpus/text/*.jsonl",
                         "text_field": "text"}),
    "image_text": ("my_images", {"format": "webdataset", "train": "corpus/images/*.tar"}),
    "video": ("my_videos", {"format": "video_folder", "train": "corpus/videos/captions.jsonl",
                            "fps": 4.0, "frame_size": 64, "max_frames": 32}),
    "action_video": ("my_episodes", {"format": "episodes", "train": "corpus/episodes/*.npz",
                                     "action_names": ("dx", "dy", "dyaw"),
                                     "action_seconds": 0.25}),
}


def get_config(arg=None):
  c = base.get_config(arg)
  c.data.image_channels = 3
  # A row holds a whole action document: its context frames and the frame they predict.
  c.data.max_frames = c.data.streams.action_video.context_frames + 1
  c.data.mixture = {"text": 0.4, "image_text": 0.4, "video": 0.1, "action_video": 0.1}
  for stream, (name, source) in SOURCES.items():
    c.data.datasets[name] = {"tfds_name": name, "data_dir": "", "version": "",
                             "train_split": "train", "eval_split": "validation",
                             "fields": FIELDS[stream],
                             "source": {**SOURCE_DEFAULTS, **source}}
    c.data.streams[stream].datasets = {name: 1.0}
  c.eval.classifier = ""                 # the MNIST judge does not know your images
  return c
