"""One dataset's conversion, start to finish: plan the pieces, run the Beam pipeline on
the chosen runner, report what the published dataset holds."""
import dataclasses
import hashlib
import json
import time

import apache_beam as beam

from mmpretrain import storage
from mmpretrain.data.convert import formats, inputs, pipeline, runners, shards
from mmpretrain.data.convert.options import SourceOptions


def check_writable(destination: str) -> None:
  """Refuses, by name, a destination this process cannot write."""
  probe = storage.join(destination, ".write-probe")
  try:
    storage.makedirs(destination)
    storage.write_bytes(probe, b"")
    storage.remove(probe)
  except (OSError, PermissionError) as e:
    raise ValueError(f"cannot write the dataset to {destination} ({e}): point data_dir "
                     "(or the dataset's data_dir) at a writable directory or bucket") from e


def plan(o: SourceOptions) -> list[inputs.Piece]:
  fmt = formats.format_of(o)
  return inputs.plan(o.globs(), fmt.planned_as, fmt.piece_bytes(o), o.compression)


def fingerprint(o: SourceOptions, pieces: list[inputs.Piece]) -> str:
  """Names the work directory: a re-run of the same plan finds its finished pieces."""
  identity = [dataclasses.asdict(o), [(p.path, p.split, p.origin) for p in pieces]]
  return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _drop_stale_work(destination: str, keep: str) -> None:
  for name in storage.listdir(destination):
    if name.startswith(shards.INCOMPLETE) and storage.join(destination, name) not in (
        keep, pipeline.outcome_path(keep)):
      storage.rmtree(storage.join(destination, name))


def build_dataset(source, tfds_name: str, data_dir: str, rebuild: bool = False,
            runner: runners.Runner = runners.Runner()) -> dict:
  """Converts one source into <data_dir>/<tfds_name>/1.0.0 (a no-op when it is there,
  unless `rebuild`); returns {'path', 'examples': {split: n}, 'corrupt': {reason: n},
  'pieces', 'records_per_s'} ('examples' None when it was there)."""
  o = SourceOptions.of(source)
  formats.format_of(o)
  runners.check_runner(runner.name, list(runner.args))
  destination = storage.join(data_dir, tfds_name, shards.VERSION)
  if storage.exists(storage.join(destination, "dataset_info.json")) and not rebuild:
    return {"path": destination, "examples": None, "corrupt": None}
  if rebuild:
    storage.rmtree(destination)
  check_writable(destination)
  pieces = plan(o)
  work = shards.work_dir(destination, fingerprint(o, pieces))
  _drop_stale_work(destination, work)
  storage.makedirs(work)
  print(f"converting {tfds_name}: {len(pieces)} pieces, {runner.describe(o.workers)}",
        flush=True)
  started = time.perf_counter()
  options = runners.pipeline_options(runner.name, list(runner.args), o.workers)
  with beam.Pipeline(options=options) as root:
    pipeline.build(root, pieces, o, tfds_name, destination, work)
  seconds = time.perf_counter() - started
  outcome = storage.read_json(pipeline.outcome_path(work))
  storage.remove(pipeline.outcome_path(work))
  if "refused" in outcome:
    raise ValueError(outcome["refused"])
  records = sum(outcome["examples"].values())
  return {"path": destination, "examples": outcome["examples"], "corrupt": outcome["corrupt"],
          "pieces": len(pieces), "records_per_s": records / max(seconds, 1e-9)}
