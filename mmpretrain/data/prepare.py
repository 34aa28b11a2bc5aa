"""`mmpretrain prepare`: builds what a config needs into config.data.data_dir, idempotently.

The TFDS datasets its streams and text sets read — the built-in ones, and a user's own
corpus converted from the files it comes in (a dataset entry with a `source`:
data/convert/); any other dataset must already be there — and the SentencePiece
tokenizer, trained on the text those datasets hold.
"""

from mmpretrain import storage
from mmpretrain.config import datasets_in_use
from mmpretrain.data import (builders, latent_cache, mixture, pipeline, records, streams,
                             token_counts)
from mmpretrain.data.convert import SOURCE_DEFAULTS, Runner
from mmpretrain.data.convert.build import build_dataset
from mmpretrain.tokenizers.text import load_text_tokenizer, train_tokenizer

TEXT_FIELDS = ("text", "caption", "actions", "mission", "question", "answers")
CORPUS_RECORDS = 20_000      # per dataset: plenty for an 8k BPE, bounded for huge sets


def prepare_datasets(config, names, rebuild: bool = False,
                     runner: Runner = Runner()) -> None:
  """Builds each dataset of `names`: a built-in one here, a `source` by a Beam pipeline on
  `runner`; any other must be there already."""
  for name in names:
    if name not in config.data.datasets:
      raise ValueError(f"unknown dataset {name!r}; config.data.datasets has "
                       f"{sorted(config.data.datasets)}")
    spec = config.data.datasets[name]
    data_dir = spec.data_dir or config.data.data_dir
    if spec.tfds_name in builders.BUILDERS:
      print(f"dataset ready: {builders.prepare_dataset(spec.tfds_name, data_dir, rebuild)}")
    elif spec.get("source") and spec.source.get("format"):
      result = build_dataset(spec.source, spec.tfds_name, data_dir, rebuild, runner)
      if result["examples"] is None:
        print(f"dataset ready: {result['path']}")
      else:
        print(f"converted {name}: {result['examples']} examples, corrupt records skipped: "
              f"{result['corrupt'] or 'none'}, {result['records_per_s']:,.0f} records/s "
              f"-> {result['path']}")
    else:   # a user's own TFDS dataset: check it is readable, never build it
      builders.open_split(spec.tfds_name, spec.train_split, data_dir, spec.version)
      print(f"dataset found: {spec.tfds_name} in {data_dir}")


def tokenizer_corpus(config, names) -> list[str]:
  """Every text-like field (text, captions, action names, missions) of the datasets."""
  texts = []
  for name in names:
    fields = config.data.datasets[name].fields
    dataset = pipeline.dataset_records(config, name, "train")
    for i in range(min(len(dataset), CORPUS_RECORDS)):
      record = dataset[i]
      if isinstance(record, records.Unreadable):
        continue
      for field in TEXT_FIELDS:
        value = record.get(fields.get(field, ""))
        if value is None:
          continue
        values = value if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) else [value]
        texts.extend(streams.as_text(v) for v in values)
  return [t for t in texts if t]


def prepare_tokenizer(config) -> str:
  """Trains the SentencePiece tokenizer on the datasets in use (those its path is keyed by)
  unless one with the right size already exists."""
  path = pipeline.tokenizer_path(config)
  vocab_size = config.data.tokenizer.vocab_size
  if storage.exists(path) and load_text_tokenizer(path).vocab_size == vocab_size:
    print(f"tokenizer ready: {path} ({vocab_size} ids)")
    return path
  if config.data.tokenizer.path:
    raise FileNotFoundError(f"data.tokenizer.path={path!r} is missing or has the wrong size; "
                            "point it at an existing model or leave it empty to train one")
  train_tokenizer(tokenizer_corpus(config, datasets_in_use(config)), path, vocab_size)
  print(f"trained tokenizer: {path} ({vocab_size} ids)")
  return path


class NotReady(RuntimeError):
  """`prepare --check`: what a config reads is missing."""


def check_prepared(config) -> list[str]:
  """What a run of `config` reads, all present: the datasets' train splits (a text set's
  eval split), the tokenizer and, for a mixture in tokens, the datasets' token counts (their
  paths). Raises NotReady naming everything missing and the command."""
  found, missing, present = [], [], []
  text_sets = list(config.eval.get("text_sets", ()))
  for name in datasets_in_use(config) + text_sets:
    spec = config.data.datasets[name]
    data_dir = spec.data_dir or config.data.data_dir
    split = spec.eval_split if name in text_sets else spec.train_split
    try:
      builders.open_split(spec.tfds_name, split, data_dir, spec.version)
      found.append(storage.join(data_dir, spec.tfds_name))
      if name not in text_sets:
        present.append(name)
    except (builders.DatasetNotPrepared, ValueError) as e:
      missing.append(str(e))
  if config.visual.cached_latents:
    for name in present:
      if latent_cache.visual_fields(config, name):
        try:          # every source shard of both splits has its cache file
          for split in ("train", "validation"):
            latent_cache.check_cache(latent_cache.cache_shards(config, name, split), name)
          spec = config.data.datasets[name]
          found.append(storage.join(spec.data_dir or config.data.data_dir,
                                    latent_cache.cache_name(config, spec.tfds_name)))
        except (builders.DatasetNotPrepared, ValueError) as e:
          missing.append(f"{e} (visual.cached_latents)")
  path = pipeline.tokenizer_path(config)
  if storage.exists(path):
    found.append(path)
    if config.data.get("mixture_unit", "documents") == "tokens":
      for name in present:       # the mixture in tokens reads every dataset's counts
        try:
          found.append(mixture.counts_file(config, name, path))
        except mixture.MissingTokenCounts as e:
          missing.append(str(e))
  else:
    missing.append(f"tokenizer {path} is missing")
  if missing:
    raise NotReady("not ready to train:\n  " + "\n  ".join(missing) + "\nrun `mmpretrain "
                   "prepare` with the same --config and overrides (tpu_scripts/prepare.sh)")
  return found


def prepare(config, datasets: list[str] | None = None, rebuild: bool = False,
            runner: Runner = Runner()) -> None:
  """Builds `datasets` (default: all the config reads, its text sets included; `rebuild`:
  anew, even where present), then the tokenizer (of the datasets it trains on) if missing."""
  names = datasets or datasets_in_use(config) + list(config.eval.get("text_sets", ()))
  prepare_datasets(config, names, rebuild, runner)
  tokenizer = prepare_tokenizer(config)
  for name in names:
    count_dataset_tokens(config, name, tokenizer, runner)


def count_dataset_tokens(config, name: str, tokenizer: str,
                         runner: Runner = Runner()) -> dict:
  """Text tokens and frames of each split of dataset `name`, kept beside it."""
  spec = config.data.datasets[name]
  source = spec.get("source") or {}
  workers = source.get("workers", SOURCE_DEFAULTS["workers"])
  counts = token_counts.count_tokens(token_counts.Dataset.of(config, name), tokenizer,
                                     runner, workers)
  for split, c in counts["splits"].items():
    print(f"tokens of {name} {split}: {sum(c['text_tokens'].values()):,} text tokens, "
          f"{c['frames']:,} frames in {c['records']:,} records")
  return counts
