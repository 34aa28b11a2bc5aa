"""`prepare` from the formats corpora come in: every format made here, in the test, with a
corrupt record in each, converted by 2 worker processes (and once to an object-store
stand-in, where only `storage` may write), read back record by record, and trained on."""
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import tiny_config
from mmpretrain import storage
from mmpretrain.data import builders, convert
from mmpretrain.data.prepare import prepare
from mmpretrain.train.loop import train

RNG = np.random.default_rng(0)
DOCS = [f"document {i}: the quick brown fox jumps over the lazy dog {i}" for i in range(24)]


def image_bytes(k: int, kind: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((20, 20, 3), 10 * k, np.uint8)).save(buffer, kind)
  return buffer.getvalue()


def write(path, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def jsonl(rows) -> bytes:
  return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def make_text(root):
  write(root / "text/a.jsonl", jsonl({"text": d} for d in DOCS[:12]) + b"{not json\n")
  write(root / "text/b.jsonl", jsonl({"text": d} for d in DOCS[12:]))
  buffer = io.BytesIO()
  pq.write_table(pa.table({"body": DOCS}), buffer)
  write(root / "parquet/part-0.parquet", buffer.getvalue())
  write(root / "parquet/part-1.parquet", b"PAR1 this is no parquet file")
  for i, d in enumerate(DOCS[:6]):
    write(root / f"plain/{i}.txt", d.encode())
  write(root / "plain/broken.txt", b"\xff\xfe\xfa not utf-8")


def make_images(root):
  os.makedirs(root / "wds")
  for shard in range(2):
    with tarfile.open(root / f"wds/shard-{shard}.tar", "w") as tar:
      for k in range(8):
        key = f"{shard:02d}{k:03d}"
        members = {f"{key}.png": image_bytes(k), f"{key}.txt": f"a square of gray {k}".encode()}
        if shard == 1 and k == 7:
          members[f"{key}.png"] = b"\x89PNG truncated"
        for name, data in members.items():
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  buffer = io.BytesIO()
  pq.write_table(pa.table({"jpg": [{"bytes": image_bytes(k, "JPEG"), "path": ""}
                                   for k in range(8)] + [{"bytes": b"junk", "path": ""}],
                           "alt": [f"gray {k}" for k in range(9)]}), buffer)
  write(root / "image_parquet/0.parquet", buffer.getvalue())
  for k in range(8):
    write(root / f"folder/img/{k}.png", image_bytes(k))
  write(root / "folder/captions.jsonl", jsonl(
      [{"file": f"img/{k}.png", "caption": f"gray {k}"} for k in range(8)]
      + [{"file": "img/missing.png", "caption": "gone"}]))


def make_videos(root):
  import av  # pylint: disable=import-outside-toplevel
  for k in range(3):
    path = str(root / f"videos/clip{k}.mp4")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
      stream = container.add_stream("mpeg4", rate=8)
      stream.width = stream.height = 32
      stream.pix_fmt = "yuv420p"
      for t in range(12):
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[:, (2 * t) % 32:(2 * t) % 32 + 4] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
  write(root / "videos/broken.webm", b"not a video")
  write(root / "videos/captions.jsonl", jsonl(
      [{"file": f"clip{k}.mp4", "caption": f"a bar moving right {k}"} for k in range(3)]
      + [{"file": "broken.webm", "caption": "broken"}]))


def make_episodes(root):
  for k in range(6):
    frames = RNG.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, frames=frames, actions=RNG.normal(size=(4, 3)).astype(np.float32),
             mission=np.asarray("drive forward"))
    write(root / f"episodes/{k}.npz", buffer.getvalue())
  buffer = io.BytesIO()
  np.savez(buffer, frames=np.zeros((5, 16, 16, 3), np.uint8), actions=np.zeros((2, 3)))
  write(root / "episodes/short_actions.npz", buffer.getvalue())
  episodes = []
  for k in range(5):                                  # one file of episodes, frames as PNGs
    names = [f"frames/{k}_{t}.png" for t in range(4)]
    for name in names:
      write(root / "episode_list" / name, image_bytes(k + 1))
    episodes.append({"frames": names, "actions": ["left", "up", "right"], "mission": "go"})
  episodes.append({"frames": ["frames/0_0.png", "frames/absent.png"], "actions": ["left"]})
  write(root / "episode_list/episodes.jsonl", jsonl(episodes))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  make_text(root), make_images(root), make_videos(root), make_episodes(root)
  return root


def sources(root):
  """(name, source, the stream's fields, expected train+validation examples, corrupt)."""
  return [
      ("my_jsonl", {"format": "jsonl", "train": f"{root}/text/*.jsonl",
                    "validation_fraction": 0.25}, 24, {"bad_json": 1}),
      ("my_parquet", {"format": "parquet", "train": f"{root}/parquet/*.parquet",
                      "text_field": "body", "validation_fraction": 0.25},
       24, {"bad_parquet": 1}),
      ("my_plain", {"format": "text_files", "train": f"{root}/plain/*.txt",
                    "validation": f"{root}/plain/0.txt"}, 7, {"bad_text": 1}),
      ("my_wds", {"format": "webdataset", "train": f"{root}/wds/shard-0.tar",
                  "validation": f"{root}/wds/shard-1.tar"}, 15, {"bad_image": 1}),
      ("my_image_parquet", {"format": "image_parquet", "train": f"{root}/image_parquet/*",
                            "image_field": "jpg", "caption_field": "alt",
                            "validation_fraction": 0.5}, 8, {"bad_image": 1}),
      ("my_folder", {"format": "image_folder", "train": f"{root}/folder/captions.jsonl",
                     "records_per_shard": 3, "validation_fraction": 0.5}, 8,
       {"missing_file": 1}),
      ("my_videos", {"format": "video_folder", "train": f"{root}/videos/captions.jsonl",
                     "records_per_shard": 2, "fps": 4.0, "frame_size": 16,
                     "validation_fraction": 0.5}, 3, {"bad_video": 1}),
      ("my_episodes", {"format": "episodes", "train": f"{root}/episodes/*.npz",
                       "action_names": ("dx", "dy", "dyaw"), "action_seconds": 0.25,
                       "validation_fraction": 0.5}, 6, {"bad_episode": 1}),
      ("my_episode_list", {"format": "episode_list",
                           "train": f"{root}/episode_list/episodes.jsonl",
                           "records_per_shard": 2, "validation_fraction": 0.5}, 5,
       {"missing_file": 1}),
  ]


def read_all(data_dir, name):
  return {split: [builders.open_split(name, split, data_dir)[i]
                  for i in range(len(builders.open_split(name, split, data_dir)))]
          for split in ("train", "validation")}


def test_every_format_converts_with_two_workers_counting_corrupt_records(corpus, tmp_path):
  for name, source, expected, corrupt in sources(corpus):
    result = convert.convert({**source, "workers": 2}, name, str(tmp_path))
    assert result["corrupt"] == corrupt, name
    assert sum(result["examples"].values()) == expected, name
    assert all(n > 0 for n in result["examples"].values()), name
    records = read_all(str(tmp_path), name)
    assert {s: len(r) for s, r in records.items()} == result["examples"]
    again = convert.convert(source, name, str(tmp_path))      # prepared: nothing to do
    assert again["examples"] is None
  text = read_all(str(tmp_path), "my_jsonl")
  assert sorted(r["text"].decode() for s in text.values() for r in s) == sorted(DOCS)
  wds = read_all(str(tmp_path), "my_wds")
  assert len(wds["train"]) == 8 and len(wds["validation"]) == 7
  image = np.asarray(Image.open(io.BytesIO(wds["train"][3]["image"])))
  assert image.shape == (20, 20, 3) and (image == 30).all()
  assert wds["train"][3]["caption"] == b"a square of gray 3"
  video = [r for s in read_all(str(tmp_path), "my_videos").values() for r in s]
  assert {len(r["frames"]) for r in video} == {6}              # 12 frames at 8 fps -> 4 fps
  frame = np.asarray(Image.open(io.BytesIO(video[0]["frames"][0])))
  assert frame.shape == (16, 16, 3)
  episode = read_all(str(tmp_path), "my_episodes")["train"][0]
  assert len(episode["frames"]) == 5 and len(episode["actions"]) == 4
  action = episode["actions"][0].decode()
  assert action.startswith("t+0.25s dx=") and " dy=" in action and " dyaw=" in action


def test_an_interrupted_conversion_resumes_without_redoing_finished_units(corpus, tmp_path,
                                                                          monkeypatch):
  source = {"format": "jsonl", "train": f"{corpus}/text/*.jsonl", "workers": 1,
            "validation_fraction": 0.25}
  real, calls = convert.convert_unit, []

  def dies_on_the_second_unit(job):
    calls.append(job[2])
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(job)
  monkeypatch.setattr(convert, "convert_unit", dies_on_the_second_unit)
  with pytest.raises(KeyboardInterrupt):
    convert.convert(source, "resumed", str(tmp_path))
  monkeypatch.setattr(convert, "convert_unit", lambda job: (calls.append(job[2]), real(job))[1])
  result = convert.convert(source, "resumed", str(tmp_path))
  assert calls == [0, 1, 1] and sum(result["examples"].values()) == 24


def test_an_object_store_destination_is_written_through_storage_only(corpus, tmp_path,
                                                                     monkeypatch):
  """With the destination treated as an object store, nothing reaches it but
  storage.write_bytes (no rename, no plain open into it)."""
  destination = tmp_path / "bucket"
  written = []
  write_bytes = storage.write_bytes
  monkeypatch.setattr(storage, "is_local", lambda path: str(destination) not in str(path))
  monkeypatch.setattr(storage, "write_bytes",
                      lambda p, d: (written.append(str(p)), write_bytes(p, d))[1])
  monkeypatch.setattr(convert, "staging_dir", lambda d: str(tmp_path / "staging"))
  source = {"format": "webdataset", "train": f"{corpus}/wds/shard-0.tar",
            "validation": f"{corpus}/wds/shard-1.tar", "workers": 2}
  result = convert.convert(source, "remote_wds", str(destination))
  files = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")
                 if p.is_file())
  assert files == sorted(os.path.relpath(p, destination) for p in written)
  assert written[-1].endswith("dataset_info.json")          # published last
  assert result["examples"] == {"train": 8, "validation": 7}


def test_a_source_with_an_unknown_key_or_format_is_refused():
  with pytest.raises(ValueError, match="unknown source keys"):
    convert.options({"format": "jsonl", "train": "x", "captoin_field": "alt"})
  with pytest.raises(ValueError, match="is not one of"):
    convert.options({"format": "csv", "train": "x"})


def test_prepare_converts_what_the_config_names_and_a_run_trains_on_it(corpus, tmp_path,
                                                                       data_dir):
  config = tiny_config(str(tmp_path / "data"))
  # This corpus is too small for a 512-piece tokenizer: use the test datasets' one.
  config.data.tokenizer.path = os.path.join(data_dir, "tokenizer_512.model")
  config.data.image_channels, config.data.max_frames, config.data.seq_len = 3, 5, 512
  config.data.mixture = {"text": 0.25, "image_text": 0.25, "video": 0.25, "action_video": 0.25}
  fields = {"text": {"text": "text"}, "image_text": {"image": "image", "caption": "caption"},
            "video": {"frames": "frames", "fps": "fps"},
            "action_video": {"frames": "frames", "actions": "actions", "mission": "mission"}}
  streams = {"my_jsonl": "text", "my_wds": "image_text", "my_videos": "video",
             "my_episode_list": "action_video"}
  by_name = {s[0]: s[1] for s in sources(corpus)}
  for name, stream in streams.items():
    config.data.datasets[name] = {"tfds_name": name, "data_dir": "", "version": "",
                                  "train_split": "train", "eval_split": "validation",
                                  "fields": fields[stream], "source": by_name[name]}
    config.data.streams[stream].datasets = {name: 1.0}
  config.data.streams.action_video.context_frames = 2
  config.train.num_steps, config.checkpoint.every_steps = 10, 0
  config.sample.captions = []
  prepare(config)
  summary = train(config, str(tmp_path / "run"))
  assert summary["last"]["step"] == 9
  assert np.isfinite(summary["last"]["loss"]) and summary["last"]["visual_tokens"] > 0
