"""Files of a run wherever its paths point: a local directory or an object store (gs://…).

Orbax and tensorstore reach GCS themselves; every other file a run, an evaluation or a
sweep reads or writes (config and summary JSON, metrics, samples, plots, routing counts,
the tokenizer, representation configs, TFDS dataset directories) goes through these
helpers on etils epath, whose fsspec backend reaches gs:// through gcsfs
(`pip install 'mmpretrain[gcs]'`). Local writes go through a temporary file and a rename,
so a reader never sees half a file; an object store publishes an object whole anyway.
"""
import contextlib
import io
import json
import os
import shutil
import tempfile
import time

from etils import epath


def is_local(path) -> bool:
  return "://" not in str(path)


def absolute(path: str) -> str:
  """An absolute local path; a URL unchanged (os.path.abspath would mangle gs://)."""
  return os.path.abspath(path) if is_local(path) else str(path)


def join(*parts) -> str:
  return str(epath.Path(parts[0]).joinpath(*parts[1:]))


def parent(path) -> str:
  return str(epath.Path(path).parent)


def exists(path) -> bool:
  return epath.Path(path).exists()


def isdir(path) -> bool:
  return epath.Path(path).is_dir()


def makedirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
  return sorted(p.name for p in epath.Path(path).iterdir())


def rmtree(path) -> None:
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  elif exists(path):
    epath.Path(path).rmtree()


def remove(path) -> None:
  epath.Path(path).unlink(missing_ok=True)


def write_bytes(path, data: bytes) -> None:
  if not is_local(path):
    epath.Path(path).write_bytes(data)
    return
  temporary = f"{path}.tmp"
  with open(temporary, "wb") as f:
    f.write(data)
  os.replace(temporary, path)


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def open_read(path):
  """A binary file object that streams `path` (seekable; an object store reads ranges)."""
  return epath.Path(path).open("rb")


def size(path) -> int:
  return epath.Path(path).stat().length


def rename(source, destination) -> None:
  """Moves a file; on an object store a copy and a delete (no reader sees half of it)."""
  if is_local(source) and is_local(destination):
    os.replace(source, destination)
  else:
    epath.Path(source).rename(destination)


@contextlib.contextmanager
def local_file(path):
  """A local path with `path`'s bytes, for readers that need one (safetensors maps the
  file): `path` itself, or a temporary copy of an object, streamed down."""
  if is_local(path):
    yield str(path)
    return
  with tempfile.TemporaryDirectory(prefix="mmpretrain-") as directory:
    local = os.path.join(directory, os.path.basename(str(path)))
    with epath.Path(path).open("rb") as source, open(local, "wb") as target:
      shutil.copyfileobj(source, target, length=16 * 2**20)
    yield local


def upload(local_path, destination) -> None:
  """A local file to `destination`, streamed (never read whole into memory)."""
  if is_local(destination):
    shutil.copyfile(local_path, destination)
    return
  with open(local_path, "rb") as source, epath.Path(destination).open("wb") as target:
    shutil.copyfileobj(source, target, length=16 * 2**20)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def write_json(path, value) -> None:
  write_text(path, json.dumps(value, indent=2))


def read_json(path):
  return json.loads(read_text(path))


def save_image(path, image, **save_options) -> None:
  """A PIL image, format from the file name (PNG, GIF; `save_options` go to Image.save)."""
  buffer = io.BytesIO()
  image.save(buffer, format=os.path.splitext(str(path))[1][1:].upper(), **save_options)
  write_bytes(path, buffer.getvalue())


def save_figure(path, figure, dpi: int = 100) -> None:
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  write_bytes(path, buffer.getvalue())


class LineLog:
  """An append-only log of text lines. Local files are appended to. An object store
  cannot append, and rewriting one object per line would upload the whole log at every
  line, so there lines are buffered and published as numbered parts beside `path`
  (metrics-00000.jsonl, metrics-00001.jsonl, …) once `part_lines` lines wait or the oldest
  has waited `part_seconds`, and on close; `read_lines` reads either layout."""

  def __init__(self, path, part_lines: int = 100, part_seconds: float = 60.0):
    self.path, self.part_lines, self.part_seconds = str(path), part_lines, part_seconds
    self.file = open(self.path, "a", encoding="utf-8") if is_local(self.path) else None
    self.pending: list[str] = []
    self.pending_since = 0.0
    self.next_part = 0 if self.file else len(_parts(self.path))

  def write(self, line: str) -> None:
    """Appends `line` (its newline included)."""
    if self.file is not None:
      self.file.write(line)
      self.file.flush()
      return
    if not self.pending:
      self.pending_since = time.monotonic()
    self.pending.append(line)
    if (len(self.pending) >= self.part_lines
        or time.monotonic() - self.pending_since >= self.part_seconds):
      self.flush()

  def flush(self) -> None:
    """Publishes the buffered lines as the next part (object stores; local: nothing)."""
    if self.pending:
      write_text(_part_path(self.path, self.next_part), "".join(self.pending))
      self.pending, self.next_part = [], self.next_part + 1

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
    self.flush()


class JsonLines(LineLog):
  """A LineLog of JSON records, one per line (the metrics log)."""

  def write(self, record: dict) -> None:  # pylint: disable=arguments-renamed
    super().write(json.dumps(record) + "\n")


def _part_path(path: str, index: int) -> str:
  stem, extension = os.path.splitext(path)
  return f"{stem}-{index:05d}{extension}"


def _parts(path: str) -> list[str]:
  """The published parts of an object-store log at `path`, in order."""
  parts, index = [], 0
  while exists(_part_path(path, index)):
    parts.append(_part_path(path, index))
    index += 1
  return parts


def read_lines(path) -> list[str]:
  """The lines of a LineLog: the file itself, or its parts on an object store."""
  path = str(path)
  files = [path] if exists(path) else _parts(path)
  return [line for f in files for line in read_text(f).splitlines()]


def read_json_lines(path) -> list[dict]:
  """The records of a JsonLines log."""
  return [json.loads(line) for line in read_lines(path) if line]
