"""Expert specialization: which token kinds each MoE expert serves, per layer, and the
routing log the train loop writes.

The train step counts, per MoE layer, how many (token, choice) assignments each expert got
from each token kind (batch.py TOKEN_KINDS: text, visual understanding = a clean image
or frame, visual generation = a noisy one). From those counts:

  text affinity of expert e = t_e / (t_e + v_e), where t_e and v_e are e's shares of all
      text and of all visual assignments in the layer, so the mixture's text:vision ratio
      does not decide the answer. Text expert if affinity ≥ threshold, vision expert if
      ≤ 1 − threshold, multimodal otherwise; experts that got nothing are `unused`.
  understanding–generation correlation = Pearson r over experts of the visual-understanding
      and visual-generation counts: near 1 when both route to the same vision experts.
"""
import io

import numpy as np

from mmpretrain import storage
from mmpretrain.batch import TOKEN_KINDS

ROUTING_FILE = "moe_routing.npz"
CATEGORIES = ("text", "vision", "multimodal", "unused")
TEXT, UNDERSTANDING, GENERATION = (TOKEN_KINDS.index(k) for k in (
    "text", "visual_understanding", "visual_generation"))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a - a.mean(), b - b.mean()
  denominator = np.sqrt(np.sum(a * a) * np.sum(b * b))
  return float(np.sum(a * b) / denominator) if denominator > 0 else float("nan")


def specialization(counts: np.ndarray, threshold: float = 0.8) -> list[dict]:
  """counts [layers, kinds, experts] -> per layer: the share of experts in each CATEGORY
  and the understanding–generation correlation (see the module docstring)."""
  if not 0.5 < threshold <= 1.0:
    raise ValueError(f"threshold must lie in (0.5, 1], got {threshold}")
  rows = []
  for layer_counts in np.asarray(counts, np.float64):
    text = layer_counts[TEXT]
    visual = layer_counts[UNDERSTANDING] + layer_counts[GENERATION]
    text_share = text / max(text.sum(), 1.0)
    visual_share = visual / max(visual.sum(), 1.0)
    used = (text + visual) > 0
    affinity = np.where(used, text_share / np.maximum(text_share + visual_share, 1e-30), 0.5)
    kinds = np.select([~used, affinity >= threshold, affinity <= 1 - threshold],
                      ["unused", "text", "vision"], "multimodal")
    row = {f"{c}_experts": float(np.mean(kinds == c)) for c in CATEGORIES}
    row["understanding_generation_r"] = _pearson(layer_counts[UNDERSTANDING],
                                                 layer_counts[GENERATION])
    rows.append(row)
  return rows


class RoutingLog:
  """Accumulates the step's routing counts and writes one window per log interval.

  <workdir>/moe_routing.npz holds `steps` [W] (the last step of each window), `counts`
  [W, moe layers, kinds, experts] and `layers` (decoder index of each MoE layer).
  """

  def __init__(self, workdir: str, moe_layers: list[int], threshold: float):
    self.path = storage.join(workdir, ROUTING_FILE)
    self.layers, self.threshold = np.asarray(moe_layers, np.int32), threshold
    self.window, self.steps, self.counts = None, [], []
    if storage.exists(self.path):             # a resumed run keeps its earlier windows
      with np.load(io.BytesIO(storage.read_bytes(self.path))) as saved:
        self.steps, self.counts = list(saved["steps"]), list(saved["counts"])

  def add(self, step_counts):
    """Adds one step's counts (device array; summed without waiting for the host)."""
    self.window = step_counts if self.window is None else self.window + step_counts

  def flush(self, step: int) -> dict:
    """Closes the window at `step`, saves the file, returns scalars for the metric writer."""
    if self.window is None:
      return {}
    counts = np.asarray(self.window, np.float64)
    self.window = None
    self.steps.append(step)
    self.counts.append(counts)
    buffer = io.BytesIO()
    np.savez(buffer, steps=np.asarray(self.steps), counts=np.stack(self.counts),
             layers=self.layers)
    storage.write_bytes(self.path, buffer.getvalue())
    scalars = {}
    for layer, row in zip(self.layers, specialization(counts, self.threshold)):
      for name, value in row.items():
        if np.isfinite(value):     # r is undefined while a token kind is absent
          scalars[f"moe_layer{layer:02d}/{name}"] = value
    return scalars
