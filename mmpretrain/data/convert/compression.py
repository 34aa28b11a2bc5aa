"""Compressed inputs, decompressed as they stream: `.gz`, `.bz2` and `.zst` by suffix
(`compression=auto`) or named. A compressed file cannot be entered midway, so it is read
by one worker from its start; uncompressed files split into byte ranges."""
import bz2
import gzip
import io
import os

CODECS = ("gzip", "bzip2", "zstd")
SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".zst": "zstd", ".zstd": "zstd"}
# Suffixes of codecs not read here: refused by name rather than parsed as garbage.
UNSUPPORTED = (".xz", ".lzma", ".lz4", ".br", ".7z", ".zip", ".rar", ".sz", ".lzo")


def check_name(name: str) -> None:
  if name not in ("auto", "none") + CODECS:
    raise ValueError(f"unknown compression {name!r}: use auto (by suffix), none, "
                     f"{', '.join(CODECS)}")


def codec_of(path: str, name: str = "auto") -> str | None:
  """The codec of `path` (None: stored plain); an unsupported suffix is refused."""
  check_name(name)
  if name != "auto":
    return None if name == "none" else name
  suffix = os.path.splitext(str(path))[1].lower()
  if suffix in UNSUPPORTED:
    raise ValueError(f"{path}: unknown compression {suffix!r}; .gz, .bz2 and .zst are read "
                     "as they stream: recompress with one of them, or set "
                     "source.compression=none if the file is not compressed")
  return SUFFIXES.get(suffix)


def decompressed(raw: io.RawIOBase, codec: str | None):
  """A readable binary stream of `raw`'s decompressed bytes."""
  if codec is None:
    return raw
  if codec == "gzip":
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if codec == "bzip2":
    return bz2.BZ2File(raw, mode="rb")
  import zstandard  # pylint: disable=import-outside-toplevel
  return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
