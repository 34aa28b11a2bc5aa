"""Reading records that may not be readable: a corrupt array_record chunk is a named error,
or (data.on_unreadable = 'skip') a marker the stream turns into a skipped, counted document.
"""
import dataclasses


class UnreadableRecordError(RuntimeError):
  """A record of a prepared dataset cannot be read or decoded."""


@dataclasses.dataclass(frozen=True)
class Unreadable:
  """Stands in for a record that could not be read (picklable, for grain's workers)."""
  index: int


def record_file(source, index: int) -> str:
  """The file that holds record `index` of a TFDS array_record source, when it can tell."""
  try:
    records = source.data_source
    reader, _ = records._reader_idx_and_position(index)  # pylint: disable=protected-access
    return str(records._paths[reader])                    # pylint: disable=protected-access
  except (AttributeError, IndexError, ValueError, TypeError):
    return "its array_record files"


class CheckedRecords:
  """A random-access source (len, [i]) whose unreadable records raise a named error, or,
  with `skip`, come back as `Unreadable` until more than `max_fraction` of the records this
  process has asked for distinct indices of have failed."""

  def __init__(self, source, dataset: str, split: str, mend: str, skip: bool,
               max_fraction: float):
    self.source, self.dataset, self.split, self.mend = source, dataset, split, mend
    self.skip, self.max_fraction = skip, max_fraction
    self.failed: set[int] = set()

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    try:
      return self.source[index]
    # Readers and decoders fail in their own ways (riegeli's RuntimeError on a hash
    # mismatch, protobuf's DecodeError, OSError): each means this record cannot be read.
    except Exception as e:  # pylint: disable=broad-exception-caught
      self.failed.add(index)
      over = len(self.failed) > self.max_fraction * len(self.source)
      if self.skip and not over:
        return Unreadable(index)
      raise UnreadableRecordError(self.describe(index, e, over)) from e

  def describe(self, index: int, error: Exception, over: bool) -> str:
    detail = " ".join(str(error).split())[:200]   # one line: the CLI's error line
    where = (f"dataset {self.dataset!r}: record {index} of split {self.split!r} in "
             f"{record_file(self.source, index)} cannot be read ({type(error).__name__}: "
             f"{detail})")
    if over:
      where += (f"; {len(self.failed)} of its {len(self.source)} records have failed, more "
                f"than data.max_unreadable_fraction={self.max_fraction}")
    skip = "" if self.skip else (", or set --config.data.on_unreadable=skip to skip such "
                                 "records (counted in data/skipped_unreadable)")
    return f"{where}. {self.mend}{skip}"
