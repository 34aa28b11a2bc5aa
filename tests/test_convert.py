"""`prepare` from the formats corpora come in, through the Beam pipeline on its local
runner: every format made here, in the test, with a corrupt record in each, read back
record by record and trained on; compressed inputs, a large file cut into pieces and
streamed, 1 against 2 worker processes, a killed pipeline and its re-run, and an
object-store stand-in where only `storage` may write."""
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
from mmpretrain.data import builders
from mmpretrain.data.convert import VERSION, Runner
from mmpretrain.data.convert.build import build_dataset
from mmpretrain.data.convert import formats, inputs, runners
from mmpretrain.data.convert.options import SourceOptions
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
                     "list_piece_bytes": 120, "validation_fraction": 0.5}, 8,
       {"missing_file": 1}),
      ("my_videos", {"format": "video_folder", "train": f"{root}/videos/captions.jsonl",
                     "list_piece_bytes": 100, "fps": 4.0, "frame_size": 16,
                     "validation_fraction": 0.5}, 3, {"bad_video": 1}),
      ("my_episodes", {"format": "episodes", "train": f"{root}/episodes/*.npz",
                       "action_names": ("dx", "dy", "dyaw"), "action_seconds": 0.25,
                       "validation_fraction": 0.5}, 6, {"bad_episode": 1}),
      ("my_episode_list", {"format": "episode_list",
                           "train": f"{root}/episode_list/episodes.jsonl",
                           "list_piece_bytes": 100, "validation_fraction": 0.5}, 5,
       {"missing_file": 1}),
  ]


def read_all(data_dir, name):
  splits = {split: builders.open_split(name, split, data_dir)
            for split in ("train", "validation")}
  return {split: [source[i] for i in range(len(source))] for split, source in splits.items()}


def test_every_format_converts_counting_corrupt_records(corpus, tmp_path):
  for name, source, expected, corrupt in sources(corpus):
    result = build_dataset({**source, "workers": 1}, name, str(tmp_path))
    assert result["corrupt"] == corrupt, name
    assert sum(result["examples"].values()) == expected, name
    assert all(n > 0 for n in result["examples"].values()), name
    records = read_all(str(tmp_path), name)
    assert {s: len(r) for s, r in records.items()} == result["examples"]
    again = build_dataset(source, name, str(tmp_path))      # prepared: nothing to do
    assert again["examples"] is None
    metadata = storage.read_json(os.path.join(result["path"], "metadata.json"))
    assert metadata["corrupt"] == corrupt and metadata["examples"] == result["examples"]
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


def big_jsonl(path, documents: int) -> list[str]:
  texts = [f"document {i} " + "lorem ipsum " * (i % 37) for i in range(documents)]
  write(path, jsonl({"text": t} for t in texts))
  return texts


def texts_by_split(data_dir, name):
  return {split: [r["text"].decode() for r in records]
          for split, records in read_all(data_dir, name).items()}


def test_two_workers_and_any_piece_size_give_the_same_dataset(tmp_path):
  """One file cut into many pieces, converted by 1 and by 2 worker processes: the same
  records in the same order, and each record in the same split whatever the pieces."""
  texts = big_jsonl(tmp_path / "in/big.jsonl", 3000)
  source = {"format": "jsonl", "train": f"{tmp_path}/in/*.jsonl", "validation_fraction": 0.1}
  one = build_dataset({**source, "workers": 1, "piece_bytes": 8192}, "one", str(tmp_path))
  two = build_dataset({**source, "workers": 2, "piece_bytes": 8192}, "two", str(tmp_path))
  coarse = build_dataset({**source, "workers": 1, "piece_bytes": 50_000}, "coarse",
                           str(tmp_path))
  assert one["pieces"] > 20 and coarse["pieces"] < one["pieces"]
  by_one, by_two = texts_by_split(str(tmp_path), "one"), texts_by_split(str(tmp_path), "two")
  assert by_one == by_two
  by_coarse = texts_by_split(str(tmp_path), "coarse")
  assert {s: sorted(t) for s, t in by_coarse.items()} == {s: sorted(t)
                                                         for s, t in by_one.items()}
  assert sorted(by_one["train"] + by_one["validation"]) == sorted(texts)
  assert 0.05 < len(by_one["validation"]) / len(texts) < 0.15


def test_byte_ranges_give_every_line_to_exactly_one_piece(tmp_path):
  rng = np.random.default_rng(1)
  lines = [b"x" * int(n) + b"\n" for n in rng.integers(0, 40, 500)]
  path = write(tmp_path / "lines.txt", b"".join(lines))
  size = os.path.getsize(path)
  for piece_bytes in (1, 7, 64, 333, size):
    seen = []
    for k, (start, stop) in enumerate(inputs.byte_ranges(size, piece_bytes)):
      piece = inputs.Piece(k, path, "lines.txt", None, start, stop)
      seen += [offset for offset, _ in inputs.lines(piece, "auto")]
    offsets = np.cumsum([0] + [len(l) for l in lines])[:-1]
    assert seen == [int(o) for o, l in zip(offsets, lines) if l.strip()], piece_bytes


class _ReadSpy(io.FileIO):
  """A file that records how much each read asks for and how much it returns."""
  reads: list = []

  def readinto(self, buffer):
    n = super().readinto(buffer)
    _ReadSpy.reads.append((self.name, len(buffer), n or 0))
    return n


def test_a_large_file_is_streamed_in_pieces_and_never_read_whole(tmp_path, monkeypatch):
  big_jsonl(tmp_path / "in/big.jsonl", 6000)
  size = os.path.getsize(tmp_path / "in/big.jsonl")
  monkeypatch.setattr(storage, "open_read",
                      lambda p: io.BufferedReader(_ReadSpy(str(p)), buffer_size=8192))
  _ReadSpy.reads = []
  piece_bytes = size // 8
  result = build_dataset({"format": "jsonl", "train": f"{tmp_path}/in/*.jsonl",
                            "workers": 1, "piece_bytes": piece_bytes}, "big", str(tmp_path))
  assert result["pieces"] == 9 and sum(result["examples"].values()) == 6000
  assert max(asked for _, asked, _ in _ReadSpy.reads) <= 8192
  read = sum(n for _, _, n in _ReadSpy.reads)
  assert read < size + result["pieces"] * 3 * 8192     # each piece reads about its range


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2"])
def test_compressed_inputs_convert_as_they_stream(tmp_path, suffix):
  import bz2  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  import zstandard  # pylint: disable=import-outside-toplevel
  compress = {".gz": gzip.compress, ".bz2": bz2.compress,
              ".zst": zstandard.ZstdCompressor().compress}[suffix]
  write(tmp_path / f"in/a.jsonl{suffix}", compress(jsonl({"text": d} for d in DOCS)))
  tar = io.BytesIO()
  with tarfile.open(fileobj=tar, mode="w") as archive:
    for k in range(6):
      for name, data in ((f"{k:03d}.png", image_bytes(k)), (f"{k:03d}.txt", b"gray")):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
  write(tmp_path / f"in/shard.tar{suffix}", compress(tar.getvalue()))
  text = build_dataset({"format": "jsonl", "train": f"{tmp_path}/in/*.jsonl{suffix}",
                          "validation_fraction": 0.3, "piece_bytes": 64, "workers": 1},
                         "text", str(tmp_path))
  assert text["corrupt"] == {} and text["pieces"] == 1          # not entered midway
  assert sorted(sum(texts_by_split(str(tmp_path), "text").values(), [])) == sorted(DOCS)
  images = build_dataset({"format": "webdataset", "train": f"{tmp_path}/in/*.tar{suffix}",
                            "validation_fraction": 0.3, "workers": 1}, "images",
                           str(tmp_path))
  assert images["corrupt"] == {} and sum(images["examples"].values()) == 6


def test_an_interrupted_pipeline_leaves_no_dataset_and_a_rerun_finishes(corpus, tmp_path,
                                                                       monkeypatch):
  """A piece that fails stops the pipeline before anything is published; the re-run
  converts only the pieces that had not finished."""
  source = {"format": "episodes", "train": f"{corpus}/episodes/*.npz", "workers": 1,
            "action_names": ("dx", "dy", "dyaw"), "validation_fraction": 0.5}
  # Beam pickles the reader into its worker: calls are logged to a file, not a list.
  real, log = formats.read_episodes, tmp_path / "calls.txt"

  def dies_on_the_fourth_piece(piece, o, log=str(log)):
    with open(log, "a", encoding="utf-8") as f:
      f.write(f"{piece.index}\n")
    if open(log, encoding="utf-8").read().count("\n") == 4:
      raise RuntimeError("preempted")
    return real(piece, o)

  def calls():
    return [int(n) for n in log.read_text().split()] if log.exists() else []
  monkeypatch.setitem(formats.FORMATS, "episodes",
                      formats.Format(dies_on_the_fourth_piece, formats.EPISODES, "file"))
  with pytest.raises(Exception, match="preempted"):
    build_dataset(source, "killed", str(tmp_path))
  destination = tmp_path / "killed" / VERSION
  assert not (destination / "dataset_info.json").exists()
  with pytest.raises(builders.DatasetNotPrepared):
    builders.open_split("killed", "train", str(tmp_path))
  finished = set(calls()[:3])
  log.write_text("0\n" * 5)                               # no more kills
  result = build_dataset(source, "killed", str(tmp_path))
  assert sorted(calls()[5:]) == sorted(set(range(7)) - finished)
  assert sum(result["examples"].values()) == 6 and result["corrupt"] == {"bad_episode": 1}
  assert not any(p.name.startswith(".incomplete") for p in destination.iterdir())


def test_an_object_store_destination_is_written_through_storage_only(corpus, tmp_path,
                                                                     monkeypatch):
  """With the destination treated as an object store, nothing reaches it but storage's
  writes (no plain open or rename into it), and dataset_info.json comes last."""
  destination = tmp_path / "bucket"
  written = []
  for name in ("write_bytes", "upload", "rename"):
    real = getattr(storage, name)
    target = 0 if name == "write_bytes" else 1               # the argument written to
    monkeypatch.setattr(storage, name, lambda *a, real=real, name=name, target=target: (
        written.append((name, str(a[target]))), real(*a))[1])
  monkeypatch.setattr(storage, "is_local", lambda path: str(destination) not in str(path))
  source = {"format": "webdataset", "train": f"{corpus}/wds/shard-0.tar",
            "validation": f"{corpus}/wds/shard-1.tar", "workers": 1}
  result = build_dataset(source, "remote_wds", str(destination))
  files = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")
                 if p.is_file())
  assert files == sorted({os.path.relpath(p, destination) for _, p in written
                          if os.path.exists(p)})
  assert {n for n, _ in written} == {"write_bytes", "upload", "rename"}
  kept = [p for _, p in written if os.path.exists(p)]          # the launcher's outcome goes
  assert kept[-1].endswith("dataset_info.json")                 # published last
  assert result["examples"] == {"train": 8, "validation": 7}


def test_bad_sources_are_refused_by_name(tmp_path):
  with pytest.raises(ValueError, match="unknown source keys"):
    SourceOptions.of({"format": "jsonl", "train": "x", "captoin_field": "alt"})
  with pytest.raises(ValueError, match="is not one of"):
    formats.format_of(SourceOptions.of({"format": "csv", "train": "x"}))
  with pytest.raises(ValueError, match="unknown compression 'lzip'"):
    SourceOptions.of({"format": "jsonl", "train": "x", "compression": "lzip"})
  write(tmp_path / "in/a.jsonl.xz", b"\xfd7zXZ")
  with pytest.raises(ValueError, match="unknown compression '.xz'"):
    build_dataset({"format": "jsonl", "train": f"{tmp_path}/in/*.xz"}, "xz", str(tmp_path))
  write(tmp_path / "in/one.jsonl", b'{"text": "a lone document"}\n')
  with pytest.raises(ValueError, match="gave no validation examples"):
    build_dataset({"format": "jsonl", "train": f"{tmp_path}/in/one.jsonl", "workers": 1},
                  "lone", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no input file matches"):
    build_dataset({"format": "jsonl", "train": f"{tmp_path}/none/*.jsonl"}, "none",
                    str(tmp_path))
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(0o500)
  if not os.access(read_only, os.W_OK):              # root may write anywhere
    with pytest.raises(ValueError, match="cannot write the dataset"):
      build_dataset({"format": "jsonl", "train": f"{tmp_path}/in/*.xz"}, "ro", str(read_only))
  with pytest.raises(ValueError, match="unknown runner"):
    build_dataset({"format": "jsonl", "train": "x"}, "r", str(tmp_path),
                    runner=Runner("Fast"))


def test_a_runner_whose_packages_are_missing_is_refused_by_name(monkeypatch):
  real = runners.importlib.util.find_spec
  monkeypatch.setattr(runners.importlib.util, "find_spec",
                      lambda name: None if name.startswith("apitools") else real(name))
  with pytest.raises(ValueError, match=r"DataflowRunner needs .*apitools.*mmpretrain\[dataflow\]"):
    runners.check_runner("DataflowRunner", [])
  with pytest.raises(ValueError, match="job_endpoint"):
    runners.check_runner("PortableRunner", [])
  monkeypatch.setattr(runners.shutil, "which", lambda name: None)
  with pytest.raises(ValueError, match="Java"):
    runners.check_runner("FlinkRunner", ["--flink_master=localhost:8081"])
  runners.check_runner("FlinkRunner", ["--job_endpoint=localhost:8099"])


def test_the_cli_converts_own_corpus_from_gzipped_json_lines(corpus, tmp_path, data_dir):
  """`mmpretrain prepare --config=configs/examples/own_corpus.py` as a user runs it, with
  the text as .jsonl.gz: every dataset through Beam, the report, the token counts."""
  import gzip  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from conftest import ROOT  # pylint: disable=import-outside-toplevel
  write(tmp_path / "text/docs.jsonl.gz", gzip.compress(jsonl({"text": d} for d in DOCS)))
  inputs_of = {"my_text": tmp_path / "text/*.jsonl.gz", "my_images": corpus / "wds/*.tar",
               "my_videos": corpus / "videos/captions.jsonl",
               "my_episodes": corpus / "episodes/*.npz"}
  overrides = [f"--config.data.data_dir={tmp_path}/data",
               f"--config.data.tokenizer.path={data_dir}/tokenizer_512.model",
               "--config.data.tokenizer.vocab_size=512"]
  for name, inputs_glob in inputs_of.items():
    overrides += [f"--config.data.datasets.{name}.source.train={inputs_glob}",
                  f"--config.data.datasets.{name}.source.validation_fraction=0.5",
                  f"--config.data.datasets.{name}.source.workers={2 if name == 'my_text' else 1}"]
  out = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "prepare",
                        "--config=configs/examples/own_corpus.py", *overrides],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "converted my_text: {'train': " in out.stdout and "runner local" in out.stdout
  assert "corrupt records skipped: {'bad_image': 1}" in out.stdout
  assert "tokens of my_text train" in out.stdout
  text = texts_by_split(f"{tmp_path}/data", "my_text")
  assert sorted(text["train"] + text["validation"]) == sorted(DOCS)


@pytest.mark.slow     # prepare, then a training run: make test-slow
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
