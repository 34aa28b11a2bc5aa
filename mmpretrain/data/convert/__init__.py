"""A corpus in the formats it comes in -> a sharded TFDS array_record dataset, built by an
Apache Beam pipeline (Beam's local runner here; Dataflow, Flink or Spark at scale).

`mmpretrain prepare` converts every dataset of the config whose entry has a `source`
(config.data.datasets.<name>.source, keys in `options.SOURCE_DEFAULTS`):
- `inputs`: the input files as bounded pieces (files, byte ranges of large line files,
  row-group runs of Parquet files), streamed and decompressed (`compression`);
- `formats`: each format's reader, piece -> keyed records;
- `pipeline`: the Beam pipeline; `shards`: the per-piece shards it writes;
- `publish`: the dataset's TFDS names and metadata, written once every piece is done;
- `build.build_dataset`: one dataset, start to finish.
Importing the package stays light (a config file reads SOURCE_DEFAULTS); Beam and TFDS
load with the modules that use them.
"""
from mmpretrain.data.convert.options import SOURCE_DEFAULTS, SourceOptions  # noqa: F401
from mmpretrain.data.convert.runners import RUNNERS, Runner  # noqa: F401
from mmpretrain.data.convert.shards import VERSION  # noqa: F401
