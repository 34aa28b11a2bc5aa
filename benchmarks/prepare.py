"""`mmpretrain prepare` throughput: the Beam conversion of a corpus made here.

  python benchmarks/prepare.py [--text_docs=1500000] [--images=32000] \
      [--image_size=384] [--image_format=jpeg]

Prints one JSON line: records/s converting JSON-lines text and webdataset images with
Beam's local runner at 1 and 2 worker processes (`scaling` = 2 ÷ 1, target ≥ 1.6 on 2
cores), and the same readers and shard writer called in a plain loop with no Beam
(`beam_over_loop` = 1 worker ÷ loop, target ≥ 0.8). Every rate includes the run's fixed
costs (Beam's start, planning, publishing), which are also measured alone: the seconds of
a run over one tiny piece (`fixed_s_*`). The default corpus is large enough for the
fixed costs to be a small part of each run, as they are of a real corpus. The images are
web-sized JPEGs by default (384², quality 90, about 50 kB each, as img2dataset writes them);
`--image_size=64 --image_format=png` gives a corpus of tiny images, where the per-record
work is small beside the fixed costs.
"""
import argparse
import io
import json
import os
import shutil
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


def encoded_image(rng, size: int, image_format: str) -> bytes:
  """Random noise at four scales, coarse ones strongest, as in photos: it compresses and
  decodes as a photo of its size does, not as flat colour or pure noise would."""
  pixels = np.zeros((size, size, 3))
  for cells, amplitude in ((4, 1.0), (16, 0.5), (64, 0.25), (size, 0.12)):
    layer = Image.fromarray(rng.integers(0, 255, (cells, cells, 3), dtype=np.uint8))
    pixels += amplitude * (np.asarray(layer.resize((size, size), Image.BICUBIC), float) - 127.5)
  image = Image.fromarray(np.clip(127.5 + pixels / 1.2, 0, 255).astype(np.uint8))
  buffer = io.BytesIO()
  image.save(buffer, image_format.upper(), **({"quality": 90} if image_format == "jpeg" else {}))
  return buffer.getvalue()


def make_images(root: str, images: int, size: int, image_format: str, seed: int = 0) -> str:
  """(glob, mean bytes an image) of `images` random images with captions in PIECES
  webdataset tars."""
  rng = np.random.default_rng(seed)
  os.makedirs(f"{root}/wds")
  pool = [encoded_image(rng, size, image_format) for _ in range(64)]  # encoding is not measured
  per_tar = -(-images // PIECES)
  for t in range(PIECES):
    with tarfile.open(f"{root}/wds/{t:04d}.tar", "w") as tar:
      for k in range(t * per_tar, min(images, (t + 1) * per_tar)):
        for name, data in ((f"{k:08d}.{image_format}", pool[k % len(pool)]),
                           (f"{k:08d}.txt", f"random pixels {k}".encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  return f"{root}/wds/*.tar", round(float(np.mean([len(p) for p in pool])))


def settled() -> None:
  """Flushes the page cache's dirty pages (the corpus just made, the last run's dataset) so
  that the kernel's writeback of them does not run inside the next timed run."""
  os.sync()


def beam_rate(source: dict, workers: int, out: str, name: str) -> float:
  settled()
  result = build.build_dataset({**source, "workers": workers}, name, out)
  return sum(result["examples"].values()) / _seconds(result)


def _seconds(result) -> float:
  return sum(result["examples"].values()) / result["records_per_s"]


def loop_rate(source: dict, out: str, name: str) -> float:
  """The pipeline's own piece converter and publisher, called in a plain loop."""
  o = SourceOptions.of({**source, "workers": 1})
  settled()
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


def measure(name: str, source: dict, out: str, repeats: int) -> dict:
  """The best rate of each way over `repeats` rounds, the ways interleaved in each round,
  so a slow spell of a shared machine neither lands on one way alone nor sets its figure."""
  one, two, loop = 0.0, 0.0, 0.0
  for r in range(repeats):
    one = max(one, beam_rate(source, 1, out, f"{name}_1_{r}"))
    two = max(two, beam_rate(source, 2, out, f"{name}_2_{r}"))
    loop = max(loop, loop_rate(source, out, f"{name}_loop_{r}"))
    for way in ("1", "2", "loop"):
      shutil.rmtree(os.path.join(out, f"{name}_{way}_{r}"))     # the disk holds one round
  return {f"{name}_records_per_s_1_worker": round(one, 1),
          f"{name}_records_per_s_2_workers": round(two, 1),
          f"{name}_records_per_s_loop": round(loop, 1),
          f"{name}_scaling": round(two / one, 3), f"{name}_beam_over_loop": round(one / loop, 3)}


def run(args, root: str) -> dict:
  text = make_text(root, args.text_docs)
  images, image_bytes = make_images(root, args.images, args.image_size, args.image_format)
  text_bytes = os.path.getsize(f"{root}/text/docs.jsonl")
  figures = {"text_docs": args.text_docs, "images": args.images, "repeats": args.repeats,
             "image_size": args.image_size, "image_format": args.image_format,
             "image_bytes": image_bytes,
             "cores": os.cpu_count()}
  for workers, key in ((1, "fixed_s_1_worker"), (2, "fixed_s_2_workers")):
    figures[key] = round(fixed_seconds(root, workers, f"{root}/out"), 2)
  figures |= measure("text", {"format": "jsonl", "train": text, "validation_fraction": 0.05,
                              "piece_bytes": -(-text_bytes // PIECES)}, f"{root}/out",
                      args.repeats)
  figures |= measure("images", {"format": "webdataset", "train": images,
                                "validation_fraction": 0.05}, f"{root}/out", args.repeats)
  return figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--text_docs", type=int, default=1_500_000)
  parser.add_argument("--images", type=int, default=32_000)
  parser.add_argument("--repeats", type=int, default=2, help="rounds; each way's best")
  parser.add_argument("--image_size", type=int, default=384)
  parser.add_argument("--image_format", choices=("jpeg", "png"), default="jpeg")
  smoke.add_flag(parser)
  args = parser.parse_args()
  if args.smoke:
    args.text_docs, args.images, args.repeats = 2000, 128, 1
  sys.stdout = sys.stderr                        # progress lines; the JSON line goes last
  root = tempfile.mkdtemp(prefix="prepare-bench-")
  try:
    figures = run(args, root)
  finally:
    shutil.rmtree(root)                          # gigabytes of corpus and datasets
  sys.stdout = sys.__stdout__
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
