"""The conversion as an Apache Beam pipeline:

    pieces ─► Reshuffle ─► ConvertPiece (shards + summary) ─► all summaries ─► publish

Each piece is converted by one worker, which writes its shards straight to the
destination's work directory and returns its counts; publishing runs once, after every
piece, so a failed or interrupted pipeline never leaves a dataset that loads.
"""
import sys
import time

import apache_beam as beam
import tensorflow_datasets as tfds
from apache_beam.metrics import Metrics

from mmpretrain import storage
from mmpretrain.data.convert import formats, inputs, publish, shards
from mmpretrain.data.convert.options import SourceOptions

METRICS = "mmpretrain.prepare"


class ConvertPiece(beam.DoFn):
  """A piece -> its shards in the work directory and its summary (examples by split,
  corrupt records by reason). A piece whose summary is already there is not redone."""

  def __init__(self, o: SourceOptions, work: str):
    super().__init__()
    self.o, self.work = o, work
    self.format = formats.format_of(o)
    self.features = None
    self.records = Metrics.counter(METRICS, "records")

  def setup(self):
    self.features = tfds.features.FeaturesDict(self.format.features)

  def process(self, piece: inputs.Piece):
    done = shards.read_summary(self.work, piece.index)
    if done is not None:
      yield done
      return
    started = time.perf_counter()
    writer = shards.PieceWriter(self.work, piece.index)
    corrupt = {}
    for key, record in self.format.read(piece, self.o):
      if isinstance(record, formats.Corrupt):
        corrupt[record.reason] = corrupt.get(record.reason, 0) + 1
        Metrics.counter(METRICS, f"corrupt_{record.reason}").inc()
        continue
      split = piece.split or ("validation" if shards.held_out(key, self.o.validation_fraction)
                              else "train")
      writer.write(split, self.features.serialize_example(record))
      self.records.inc()
    summary = {"piece": piece.index, "origin": piece.origin, "examples": writer.close(),
               "corrupt": corrupt}
    shards.write_summary(self.work, summary)
    seconds = time.perf_counter() - started
    n = sum(summary["examples"].values())
    print(f"  piece {piece.index} ({piece.origin}): {n} records in {seconds:.1f} s "
          f"({n / max(seconds, 1e-9):,.0f} records/s)", file=sys.stderr, flush=True)
    yield summary


def build(root: beam.Pipeline, pieces: list[inputs.Piece], o: SourceOptions, tfds_name: str,
          destination: str, work: str) -> beam.PCollection:
  """Adds the conversion of `pieces` to the pipeline `root`; its output is the totals,
  also written to `<work>.json` for the launcher."""
  description = f"converted by mmpretrain prepare ({o.format})"
  features = formats.format_of(o).features
  return (root
          | f"{tfds_name}/pieces" >> beam.Create(pieces)
          | f"{tfds_name}/spread" >> beam.Reshuffle()
          | f"{tfds_name}/convert" >> beam.ParDo(ConvertPiece(o, work))
          | f"{tfds_name}/gather" >> beam.combiners.ToList()
          | f"{tfds_name}/publish" >> beam.Map(publish.publish, tfds_name, features,
                                               description, destination, work)
          | f"{tfds_name}/report" >> beam.Map(_write_outcome, outcome_path(work)))


def outcome_path(work: str) -> str:
  return work + ".json"


def _write_outcome(outcome: dict, path: str) -> None:
  storage.write_json(path, outcome)
