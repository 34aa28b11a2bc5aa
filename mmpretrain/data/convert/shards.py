"""Where a conversion writes, and the writing of one piece's shards.

While a dataset is converted, every piece writes one array_record shard per split it
feeds, under a temporary name inside `<destination>/.incomplete-<plan>/`, then a small
JSON summary of its counts (the piece's completion mark). Only `publish` gives shards
their TFDS names and writes the metadata, `dataset_info.json` last: until then no
dataset loads from the destination.
"""
import hashlib
import json
import os
import tempfile

from mmpretrain import storage

VERSION = "1.0.0"
SPLITS = ("train", "validation")
INCOMPLETE = ".incomplete-"
_HOLD_OUT_SCALE = 2**64


def held_out(key: str, fraction: float) -> bool:
  """Whether the record of `key` is in the validation split: a hash of the key alone, so
  the same on any runner and at any worker count."""
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") < fraction * _HOLD_OUT_SCALE


def work_dir(destination: str, fingerprint: str) -> str:
  return storage.join(destination, INCOMPLETE + fingerprint)


def shard_path(work: str, split: str, piece: int) -> str:
  return storage.join(work, f"{split}-{piece:06d}.array_record")


def summary_path(work: str, piece: int) -> str:
  return storage.join(work, f"piece-{piece:06d}.json")


def array_record_writer(path: str):
  """A writer of one local array_record file, a record at a time (random access)."""
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter
  return ArrayRecordWriter(path, "group_size:1")


class PieceWriter:
  """One piece's shards: opened on a split's first record, each written locally and put
  in place whole by `close` (a rename, or an upload to an object store)."""

  def __init__(self, work: str, piece: int):
    self.work, self.piece = work, piece
    self.local = storage.is_local(work)
    self.scratch = None if self.local else tempfile.mkdtemp(prefix="mmpretrain-shard-")
    self.writers, self.examples = {}, dict.fromkeys(SPLITS, 0)

  def _local_path(self, split: str) -> str:
    if self.local:
      return shard_path(self.work, split, self.piece) + ".tmp"
    return os.path.join(self.scratch, f"{split}.array_record")

  def write(self, split: str, example: bytes) -> None:
    if split not in self.writers:
      self.writers[split] = array_record_writer(self._local_path(split))
    self.writers[split].write(example)
    self.examples[split] += 1

  def close(self) -> dict[str, int]:
    """Puts every shard in place; returns {split: examples}."""
    for split, writer in self.writers.items():
      writer.close()
      if self.local:
        os.replace(self._local_path(split), shard_path(self.work, split, self.piece))
      else:
        storage.upload(self._local_path(split), shard_path(self.work, split, self.piece))
    if self.scratch:
      storage.rmtree(self.scratch)
    return self.examples


def write_summary(work: str, summary: dict) -> None:
  storage.write_text(summary_path(work, summary["piece"]), json.dumps(summary))


def read_summary(work: str, piece: int) -> dict | None:
  """A finished piece's summary, or None while it is not finished."""
  path = summary_path(work, piece)
  return storage.read_json(path) if storage.exists(path) else None
