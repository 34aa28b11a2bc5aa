"""Metric sinks: TensorBoard event files (tensorboardX, no TensorFlow) and a JSONL log.

(clu's metric writers import TensorFlow, which the core install does not have.)
"""
import numpy as np
from tensorboardX import SummaryWriter

from mmpretrain import storage
from mmpretrain.batch import SKIP_FIELDS


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
        **{field: f"data/{field}" for field in SKIP_FIELDS}}


def tagged(metrics: dict) -> dict:
  return {TAGS.get(k, f"train/{k}"): v for k, v in metrics.items()}
