"""Input files -> bounded pieces of work, and streaming reads of one piece.

A piece is a whole file, a byte range of a line-oriented file (JSON lines, a file list),
or a run of a Parquet file's row groups, so one very large file is read by many workers.
Nothing is read whole: lines and row groups stream from `storage.open_read`.
"""
import dataclasses
import glob as globlib
import os
import re

from mmpretrain import storage
from mmpretrain.data.convert import compression

_WILDCARD = re.compile(r"[*?\[]")


@dataclasses.dataclass(frozen=True)
class Piece:
  """One unit of work. `name` is the file's path below its glob's fixed directory (the
  same wherever the corpus is mounted); records are keyed by it. `split` is the split of
  every record when the split comes from the globs, or None (held out by key)."""
  index: int
  path: str
  name: str
  split: str | None
  start: int = 0                 # byte offset (line files) or first row group (Parquet)
  stop: int | None = None        # end byte / row group, exclusive; None: to the end
  first_row: int = 0             # Parquet: the file's row index of the first row

  @property
  def origin(self) -> str:
    """What the piece reads, stable when other inputs are added."""
    end = "" if self.stop is None else self.stop
    return f"{self.name}@{self.start}:{end}"


def _fixed_root(pattern: str) -> str:
  """The directory above a glob's first wildcard."""
  match = _WILDCARD.search(pattern)
  return os.path.dirname(pattern[:match.start()] if match else pattern)


def expand(patterns: str) -> list[tuple[str, str]]:
  """(path, name below the glob's fixed directory) of the files matching comma-separated
  globs, local or on an object store; a glob that matches nothing is refused."""
  found = []
  for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
    if storage.is_local(pattern):
      paths = sorted(p for p in globlib.glob(pattern) if os.path.isfile(p))
    else:
      import fsspec  # pylint: disable=import-outside-toplevel
      fs, _, matched = fsspec.get_fs_token_paths(pattern)
      paths = sorted(fs.unstrip_protocol(m) for m in matched)
    if not paths:
      raise FileNotFoundError(f"no input file matches {pattern!r}: check the source's "
                              "train / validation globs")
    root = _fixed_root(pattern)
    found += [(p, os.path.relpath(p, root) if root else p) for p in paths]
  return found


def byte_ranges(size: int, piece_bytes: int) -> list[tuple[int, int | None]]:
  if size <= piece_bytes:
    return [(0, None)]
  starts = list(range(0, size, piece_bytes))
  return [(s, s + piece_bytes if s + piece_bytes < size else None) for s in starts]


def row_group_runs(path: str, piece_bytes: int) -> list[tuple[int, int, int]]:
  """(first row group, stop, first row) runs of a Parquet file of about piece_bytes each,
  from its footer alone."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  try:
    with storage.open_read(path) as f:
      meta = pq.ParquetFile(f).metadata
  except Exception:  # pylint: disable=broad-except  # unreadable: its reader counts it
    return [(0, None, 0)]
  runs, start, first_row, run_rows, run_bytes = [], 0, 0, 0, 0
  for g in range(meta.num_row_groups):
    run_rows += meta.row_group(g).num_rows
    run_bytes += meta.row_group(g).total_byte_size
    if run_bytes >= piece_bytes or g == meta.num_row_groups - 1:
      runs.append((start, g + 1, first_row))
      start, first_row, run_rows, run_bytes = g + 1, first_row + run_rows, 0, 0
  return runs or [(0, None, 0)]


def plan(globs: dict[str, str], split_by: str, piece_bytes: int,
         compression_name: str) -> list[Piece]:
  """The pieces of every input of {split: globs}, in a fixed order. `split_by`: 'lines'
  (byte ranges), 'row_groups' (Parquet) or 'file'."""
  pieces = []
  held_out = len(globs) == 1
  for split, patterns in globs.items():
    for path, name in expand(patterns):
      whole = compression.codec_of(path, compression_name) is not None or split_by == "file"
      if whole:
        ranges = [(0, None, 0)]
      elif split_by == "row_groups":
        ranges = row_group_runs(path, piece_bytes)
      else:
        ranges = [(a, b, 0) for a, b in byte_ranges(storage.size(path), piece_bytes)]
      pieces += [Piece(len(pieces) + k, path, name, None if held_out else split, a, b, row)
                 for k, (a, b, row) in enumerate(ranges)]
  return pieces


def open_piece(piece: Piece, compression_name: str):
  """The piece's file as a decompressed binary stream, from its start."""
  raw = storage.open_read(piece.path)
  return compression.decompressed(raw, compression.codec_of(piece.path, compression_name))


def lines(piece: Piece, compression_name: str):
  """(byte offset, line) of every non-blank line that starts inside the piece's range.

  A range that begins inside a line leaves that line to the range before it."""
  with open_piece(piece, compression_name) as f:
    offset = piece.start
    if piece.start > 0:
      f.seek(piece.start - 1)
      offset = piece.start - 1 + len(f.readline())
    while piece.stop is None or offset < piece.stop:
      line = f.readline()
      if not line:
        break
      if line.strip():
        yield offset, line
      offset += len(line)
