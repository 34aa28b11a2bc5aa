"""`mmpretrain analyze-experts`: the expert specialization (train/routing.py) of the
routing counts a run logged, as a table and a figure."""
import io

import numpy as np

from mmpretrain import storage
from mmpretrain.train.routing import CATEGORIES, ROUTING_FILE, specialization


def load_routing(workdir: str, windows: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """Counts summed over the last `windows` windows (0 = all), the layers, and the steps."""
  path = storage.join(workdir, ROUTING_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} does not exist: analyze-experts reads the routing counts "
                            "that `mmpretrain train` writes for a config with "
                            "model.moe.num_experts > 0")
  with np.load(io.BytesIO(storage.read_bytes(path))) as saved:
    steps, counts, layers = saved["steps"], saved["counts"], saved["layers"]
  chosen = slice(-windows, None) if windows > 0 else slice(None)
  return counts[chosen].sum(axis=0), layers, [int(s) for s in steps[chosen]]


def plot(table: list[dict], layers, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (shares_ax, corr_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
  x = np.arange(len(layers))
  bottom = np.zeros(len(layers))
  for category, color in zip(CATEGORIES, ("tab:blue", "tab:orange", "tab:green", "lightgray")):
    share = np.array([row[f"{category}_experts"] for row in table])
    shares_ax.bar(x, share, bottom=bottom, color=color, label=category)
    bottom += share
  shares_ax.set(xticks=x, xticklabels=[str(l) for l in layers], xlabel="layer",
                ylabel="share of experts", title="Expert specialization")
  shares_ax.legend(fontsize=8)
  corr_ax.plot(x, [row["understanding_generation_r"] for row in table], marker="o")
  corr_ax.set(xticks=x, xticklabels=[str(l) for l in layers], xlabel="layer", ylim=(-1.05, 1.05),
              ylabel="Pearson r", title="Understanding vs generation routing")
  fig.tight_layout()
  storage.save_figure(path, fig)
  plt.close(fig)


def analyze(workdir: str, windows: int = 1, threshold: float = 0.8) -> dict:
  """Writes <workdir>/analysis/experts.{json,png}; returns the JSON table."""
  counts, layers, steps = load_routing(workdir, windows)
  table = specialization(counts, threshold)
  result = {"steps": steps, "threshold": threshold,
            "layers": [{"layer": int(l), **row} for l, row in zip(layers, table)]}
  out = storage.join(workdir, "analysis")
  storage.makedirs(out)
  storage.write_json(storage.join(out, "experts.json"), result)
  plot(table, layers, storage.join(out, "experts.png"))
  return result
