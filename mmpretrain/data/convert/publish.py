"""The last step of a conversion: finished pieces -> a TFDS dataset that loads.

Shards get their TFDS names (in piece order, so record order is the same at any worker
count), then `features.json` and `metadata.json` (corrupt records by reason, token counts,
each shard's origin) are written, and `dataset_info.json` last: its presence marks the
dataset complete.
"""
import os
import tempfile

import tensorflow_datasets as tfds

from mmpretrain import storage
from mmpretrain.data.convert import shards

TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def add_counts(total: dict, counts: dict) -> dict:
  for key, n in counts.items():
    total[key] = total.get(key, 0) + n
  return total


def totals(summaries: list[dict]) -> dict:
  """Examples by split and corrupt records by reason over every piece."""
  examples, corrupt = dict.fromkeys(shards.SPLITS, 0), {}
  for s in summaries:
    add_counts(examples, s["examples"])
    add_counts(corrupt, s["corrupt"])
  return {"examples": examples, "corrupt": corrupt}


def write_dataset(destination: str, tfds_name: str, features: dict,
                  split_shards: dict[str, list[tuple[str, int]]], description: str,
                  metadata: dict) -> None:
  """Shards {split: [(path, examples)]}, in order, become the dataset at `destination`
  (`<data_dir>/<name>/<version>`): renamed to their TFDS names, then the metadata files
  through storage, dataset_info.json last."""
  scratch = tempfile.mkdtemp(prefix="mmpretrain-metadata-")
  storage.makedirs(destination)
  split_infos = []
  for split, files in split_shards.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=scratch, template=TEMPLATE, dataset_name=tfds_name,
        filetype_suffix="array_record", split=split)
    for index, (path, _) in enumerate(files):
      name = os.path.basename(template.sharded_filepath(shard_index=index,
                                                        num_shards=len(files)))
      storage.rename(path, storage.join(destination, name))
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[n for _, n in files],
                                           num_bytes=0, filename_template=template))
  info = tfds.core.DatasetInfo(
      builder=tfds.core.DatasetIdentity(name=tfds_name, version=tfds.core.Version(
          shards.VERSION), data_dir=scratch, module_name=""),
      features=tfds.features.FeaturesDict(features), description=description,
      metadata=tfds.core.MetadataDict(metadata))
  info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD)
  info.set_splits(tfds.core.SplitDict(split_infos))
  info.write_to_directory(scratch)
  for name in sorted(os.listdir(scratch), key=lambda n: n == "dataset_info.json"):
    with open(os.path.join(scratch, name), "rb") as f:
      storage.write_bytes(storage.join(destination, name), f.read())
  storage.rmtree(scratch)


def publish(summaries: list[dict], tfds_name: str, features: dict, description: str,
            destination: str, work: str) -> dict:
  """Every piece's non-empty shards and the metadata; the work directory goes. Returns
  the totals, with `refused` naming why when a split has no example (then nothing is
  published, and the launcher raises it: an error inside a pipeline reaches the user as
  a worker's traceback)."""
  summaries = sorted(summaries, key=lambda s: s["piece"])
  counts = totals(summaries)
  empty = [split for split in shards.SPLITS if not counts["examples"][split]]
  if empty:
    return {**counts, "refused": (
        f"{tfds_name}: the inputs gave no {empty[0]} examples (corrupt: "
        f"{counts['corrupt'] or 'none'}); give `validation` inputs or raise "
        "validation_fraction")}
  split_shards, origins = {}, {}
  for split in shards.SPLITS:
    kept = [s for s in summaries if s["examples"].get(split, 0)]
    split_shards[split] = [(shards.shard_path(work, split, s["piece"]), s["examples"][split])
                           for s in kept]
    origins[split] = [s["origin"] for s in kept]
  write_dataset(destination, tfds_name, features, split_shards, description,
                {**counts, "shard_origins": origins})
  storage.rmtree(work)
  return counts
