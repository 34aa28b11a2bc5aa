"""`mmpretrain prepare` throughput: the Beam conversion of a corpus made here.

  python benchmarks/prepare.py [--text_docs=1500000] [--images=96000]

Prints one JSON line: records/s converting JSON-lines text and webdataset images with
Beam's local runner at 1 and 2 worker processes (`scaling` = 2 ÷ 1, target ≥ 1.6 on 2
cores), and the same readers and shard writer called in a plain loop with no Beam
(`beam_over_loop` = 1 worker ÷ loop, target ≥ 0.8). Every rate includes the run's fixed
costs (Beam's start, planning, publishing), which are also measured alone: the seconds of
a run over one tiny piece (`fixed_s_*`). The default corpus is large enough for the
fixed costs to be a small part of each run, as they are of a real corpus.
"""
import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from mmpretrain.data.convert import SourceOptions, build, publish, shards  # noqa: F401
from mmpretrain.data.convert.pipeline import ConvertPiece
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=wrong-import-order

PIECES = 32                      # per corpus: enough to keep 2 workers busy to the end
WORDS = np.array("the quick brown fox jumps over a lazy dog while rain falls".split())


def make_text(root: str, documents: int, seed: int = 0) -> str:
  rng = np.random.default_rng(seed)
  os.makedirs(f"{root}/text")
  with open(f"{root}/text/docs.jsonl", "w", encoding="utf-8") as f:
    for i in range(documents):
      words = " ".join(WORDS[rng.integers(0, len(WORDS), int(rng.integers(40, 160)))])
      f.write(json.dumps({"id": i, "text": words}) + "\n")
  return f"{root}/text/*.jsonl"


def png(rng) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def make_images(root: str, images: int, seed: int = 0) -> str:
  """`images` random 64² PNGs with captions, in PIECES webdataset tars."""
  rng = np.random.default_rng(seed)
  os.makedirs(f"{root}/wds")
  pool = [png(rng) for _ in range(64)]           # encoding is not what is measured
  per_tar = -(-images // PIECES)
  for t in range(PIECES):
    with tarfile.open(f"{root}/wds/{t:04d}.tar", "w") as tar:
      for k in range(t * per_tar, min(images, (t + 1) * per_tar)):
        for name, data in ((f"{k:08d}.png", pool[k % len(pool)]),
                           (f"{k:08d}.txt", f"random pixels {k}".encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  return f"{root}/wds/*.tar"


def beam_rate(source: dict, workers: int, out: str, name: str) -> float:
  result = build.build_dataset({**source, "workers": workers}, name, out)
  return sum(result["examples"].values()) / _seconds(result)


def _seconds(result) -> float:
  return sum(result["examples"].values()) / result["records_per_s"]


def loop_rate(source: dict, out: str, name: str) -> float:
  """The pipeline's own piece converter and publisher, called in a plain loop."""
  o = SourceOptions.of({**source, "workers": 1})
  started = time.perf_counter()
  pieces = build.plan(o)
  destination = os.path.join(out, name, shards.VERSION)
  work = shards.work_dir(destination, build.fingerprint(o, pieces))
  os.makedirs(work)
  convert = ConvertPiece(o, work)
  convert.setup()
  summaries = [s for piece in pieces for s in convert.process(piece)]
  counts = publish.publish(summaries, name, convert.format.features, "loop", destination,
                           work)
  return sum(counts["examples"].values()) / (time.perf_counter() - started)


def fixed_seconds(root: str, workers: int, out: str) -> float:
  """Seconds of a conversion of a few records: the runner's start, planning, publishing."""
  train = make_text(os.path.join(root, f"fixed_{workers}"), 64)
  result = build.build_dataset({"format": "jsonl", "train": train, "workers": workers,
                                "validation_fraction": 0.25}, f"fixed_{workers}", out)
  return _seconds(result)


def measure(name: str, source: dict, out: str) -> dict:
  one = beam_rate(source, 1, out, f"{name}_1")
  two = beam_rate(source, 2, out, f"{name}_2")
  loop = loop_rate(source, out, f"{name}_loop")
  return {f"{name}_records_per_s_1_worker": round(one, 1),
          f"{name}_records_per_s_2_workers": round(two, 1),
          f"{name}_records_per_s_loop": round(loop, 1),
          f"{name}_scaling": round(two / one, 3), f"{name}_beam_over_loop": round(one / loop, 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--text_docs", type=int, default=1_500_000)
  parser.add_argument("--images", type=int, default=96_000)
  smoke.add_flag(parser)
  args = parser.parse_args()
  if args.smoke:
    args.text_docs, args.images = 2000, 128
  sys.stdout = sys.stderr                        # progress lines; the JSON line goes last
  root = tempfile.mkdtemp(prefix="prepare-bench-")
  text = make_text(root, args.text_docs)
  images = make_images(root, args.images)
  text_bytes = os.path.getsize(f"{root}/text/docs.jsonl")
  figures = {"text_docs": args.text_docs, "images": args.images, "cores": os.cpu_count()}
  for workers, key in ((1, "fixed_s_1_worker"), (2, "fixed_s_2_workers")):
    figures[key] = round(fixed_seconds(root, workers, f"{root}/out"), 2)
  figures |= measure("text", {"format": "jsonl", "train": text, "validation_fraction": 0.05,
                              "piece_bytes": -(-text_bytes // PIECES)}, f"{root}/out")
  figures |= measure("images", {"format": "webdataset", "train": images,
                                "validation_fraction": 0.05}, f"{root}/out")
  sys.stdout = sys.__stdout__
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
