"""The train step's metrics between logs (clu.metrics, on device) and their sinks:
TensorBoard event files (tensorboardX, no TensorFlow) and a JSONL log.

(clu's metric writers import TensorFlow, which the core install does not have; its
metrics do not.)
"""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from tensorboardX import SummaryWriter

from mmpretrain import storage
from mmpretrain.batch import SKIP_FIELDS, STREAM_TOKEN_FIELDS, STREAMS


# Summed over the steps between logs (each already summed over the global batch).
WINDOW_COUNTS = ("tokens", *SKIP_FIELDS, *STREAM_TOKEN_FIELDS)


@flax.struct.dataclass
class Total(clu_metrics.Metric):
  """A sum over steps (clu's own metrics are means)."""
  total: jnp.ndarray

  @classmethod
  def from_model_output(cls, values, **_) -> "Total":
    return cls(total=jnp.sum(values))

  def merge(self, other: "Total") -> "Total":
    return type(self)(total=self.total + other.total)

  def compute(self) -> jnp.ndarray:
    return self.total


class StepMetrics:
  """The step metrics since the previous `read`, accumulated on device (one jitted merge a
  step, no host sync): counts summed (WINDOW_COUNTS), every other scalar averaged over the
  steps; non-finite updates (`nonfinite`) counted over the whole invocation."""

  def __init__(self):
    self.window = None
    self.nonfinite = Total(total=jnp.zeros((), jnp.int32))
    self._first = self._merge = None

  def _build(self, names) -> None:
    collection = clu_metrics.Collection.create(**{
        name: (Total if name in WINDOW_COUNTS else clu_metrics.Average).from_output(name)
        for name in names})
    self._first = jax.jit(lambda metrics: collection.single_from_model_output(**metrics))
    self._merge = jax.jit(lambda window, metrics: window.merge(
        collection.single_from_model_output(**metrics)))

  def add(self, metrics: dict) -> None:
    metrics = dict(metrics)
    self.nonfinite = self.nonfinite.merge(Total.from_model_output(metrics.pop("nonfinite", 0)))
    if self._first is None:
      self._build(sorted(metrics))
    self.window = (self._first(metrics) if self.window is None
                   else self._merge(self.window, metrics))

  def nonfinite_updates(self) -> int:
    return int(self.nonfinite.compute())

  def read(self) -> dict:
    """Host floats (counts as ints) of the window, and `nonfinite_updates_skipped`; starts
    a new window."""
    values = jax.device_get(self.window.compute())
    self.window = None
    read = {k: int(v) if k in WINDOW_COUNTS else float(v) for k, v in values.items()}
    read["nonfinite_updates_skipped"] = self.nonfinite_updates()
    return read


class MetricWriter:
  """Writes scalars and images under <workdir>/tensorboard and <workdir>/metrics.jsonl
  (a gs:// workdir too: tensorboardX writes there with google-cloud-storage)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self.tb = SummaryWriter(storage.join(workdir, "tensorboard"))
      self.jsonl = storage.JsonLines(storage.join(workdir, "metrics.jsonl"))

  def scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self.tb.add_scalar(name, float(value), step)
    self.jsonl.write({"step": step, **{k: float(v) for k, v in scalars.items()}})

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    if self.enabled:
      self.tb.add_image(name, image, step, dataformats="HWC" if image.ndim == 3 else "HW")

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      self.jsonl.close()


# Logged names grouped by modality so TensorBoard shows one panel per modality.
TAGS = {"text_loss": "text/loss", "text_bits_per_byte": "text/bits_per_byte",
        "z_loss": "text/z_loss", "text_tokens": "text/trained_tokens",
        "flow_loss": "visual/flow_loss", "visual_tokens": "visual/trained_tokens",
        "loss": "train/loss", "grad_norm": "train/grad_norm",
        "learning_rate": "train/learning_rate", "tokens_per_s": "speed/tokens_per_s",
        "step_s": "speed/step_s", "mfu": "speed/mfu", "device_memory_gb": "speed/device_memory_gb",
        "device_peak_memory_gb": "speed/device_peak_memory_gb",
        **{field: f"data/{field}" for field in SKIP_FIELDS},
        **{f"stream_tokens_{s}": f"data/stream_tokens/{s}" for s in STREAMS},
        **{f"stream_token_share_{s}": f"data/stream_token_share/{s}" for s in STREAMS}}


def tagged(metrics: dict) -> dict:
  return {TAGS.get(k, f"train/{k}"): v for k, v in metrics.items()}
