"""A dataset's `source` (config.data.datasets.<name>.source): what to convert and how."""
import dataclasses

from mmpretrain.data.convert import compression

MiB = 2**20

SOURCE_DEFAULTS = {
    "format": "",                  # one of formats.FORMATS; '' = not converted (a TFDS dataset)
    "train": "",                   # glob(s) of the train inputs, comma-separated
    "validation": "",              # glob(s) of the validation inputs ('' = held out)
    "validation_fraction": 0.01,   # held out of the train inputs when `validation` is ''
    "compression": "auto",         # auto (by suffix) | none | gzip | bzip2 | zstd
    "workers": 2,                  # local runner: converting processes
    "piece_bytes": 64 * MiB,       # a large line or Parquet file is read in pieces of this
    "list_piece_bytes": MiB // 4,  # a file list (folder formats) in pieces of this
    "text_field": "text",
    "image_field": "image",
    "caption_field": "caption",
    "file_field": "file",
    "fps": 4.0,                    # video: frames per second kept
    "frame_size": 64,              # video: frames center-cropped and resized to this square
    "max_frames": 64,              # video: frames kept from the start of each clip
    "action_names": (),            # episodes: names of numeric action components
    "action_seconds": 1.0,         # episodes: time per step, written before numeric actions
}


@dataclasses.dataclass(frozen=True)
class SourceOptions:
  """The settings of one source, SOURCE_DEFAULTS where not given."""
  format: str
  train: str
  validation: str
  validation_fraction: float
  compression: str
  workers: int
  piece_bytes: int
  list_piece_bytes: int
  text_field: str
  image_field: str
  caption_field: str
  file_field: str
  fps: float
  frame_size: int
  max_frames: int
  action_names: tuple[str, ...]
  action_seconds: float

  @classmethod
  def of(cls, source) -> "SourceOptions":
    """From a config's source; an unknown key or compression is refused (an unknown
    format by formats.format_of, which knows them)."""
    given = dict(source)
    unknown = sorted(set(given) - set(SOURCE_DEFAULTS))
    if unknown:
      raise ValueError(f"unknown source keys {unknown}; the keys are {sorted(SOURCE_DEFAULTS)}")
    values = {**SOURCE_DEFAULTS, **given}
    compression.check_name(values["compression"])
    if not values["train"]:
      raise ValueError("the source has no `train` inputs: set source.train to a glob")
    if values["workers"] < 1 or values["piece_bytes"] < 1 or values["list_piece_bytes"] < 1:
      raise ValueError("source.workers, piece_bytes and list_piece_bytes must be positive")
    values["action_names"] = tuple(values["action_names"])
    return cls(**values)

  def globs(self) -> dict[str, str]:
    """{split: its input globs}: both splits' when `validation` is given, else train's."""
    if self.validation:
      return {"train": self.train, "validation": self.validation}
    return {"train": self.train}
