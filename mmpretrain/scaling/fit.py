"""IsoFLOP fits, separately per modality of one model (the paper's headline analysis).

Method (Chinchilla's approach 2): for each compute budget C, a parabola in log10 N fitted
to that budget's losses gives the loss-optimal size N_opt(C) at its vertex; the tokens at
that size, D_opt(C), come from the budget's own runs (log D is linear in log N at fixed C;
a line through them is read at N_opt). Then N_opt ∝ C^a and D_opt ∝ C^b are least-squares
lines in log-log space. Confidence intervals: bootstrap over runs — each budget's runs are
resampled with replacement (kept if ≥ 3 distinct sizes remain) and everything is refitted.

A vertex outside a budget's sampled sizes is an extrapolation; such budgets are reported
(`inside: false`) and still fitted, since the grid, not the method, is then the limit.
"""
import collections
import json

import matplotlib
import numpy as np
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from mmpretrain import storage  # pylint: disable=wrong-import-position

METHOD = ("IsoFLOP parabolas (loss vs log10 N per budget, Chinchilla approach 2), then "
          "log-log least squares of N_opt and D_opt against C; bootstrap over runs")
DEFAULT_METRICS = {"text": "eval.text/text_loss", "vision": "eval.image_text/flow_loss"}


def metric_value(result: dict, key: str) -> float | None:
  """`section.name` of a results.jsonl line, e.g. eval.text/text_loss or final.flow_loss."""
  section, _, name = key.partition(".")
  value = result.get(section, {}).get(name)
  return None if value is None else float(value)


def parabola_vertex(log_n: np.ndarray, loss: np.ndarray) -> tuple[float, float] | None:
  """(log10 N at the minimum, the minimum) of a fitted parabola; None if it opens down."""
  c2, c1, c0 = np.polyfit(log_n, loss, 2)
  if c2 <= 0:
    return None
  x = -c1 / (2 * c2)
  return float(x), float(c0 + c1 * x + c2 * x * x)


def budget_optimum(runs: list[dict]) -> dict | None:
  """The optimum of one budget's runs [{'params', 'tokens', 'loss'}]; None if fewer than 3
  sizes or no minimum."""
  log_n = np.log10([r["params"] for r in runs])
  if len(set(log_n)) < 3:
    return None
  vertex = parabola_vertex(log_n, np.array([r["loss"] for r in runs]))
  if vertex is None:
    return None
  x, loss = vertex
  slope, intercept = np.polyfit(log_n, np.log10([r["tokens"] for r in runs]), 1)
  return {"n_opt": 10 ** x, "d_opt": 10 ** (intercept + slope * x), "loss": loss,
          "inside": bool(log_n.min() <= x <= log_n.max())}


def power_law(budgets, values) -> tuple[float, float]:
  """(exponent, coefficient) of values = coefficient · budgets^exponent."""
  exponent, log_coefficient = np.polyfit(np.log10(budgets), np.log10(values), 1)
  return float(exponent), float(10 ** log_coefficient)


def optima(by_budget: dict[float, list[dict]]) -> dict[float, dict]:
  found = {c: budget_optimum(runs) for c, runs in sorted(by_budget.items())}
  return {c: o for c, o in found.items() if o is not None}


def exponents(found: dict[float, dict]) -> tuple[float, float] | None:
  if len(found) < 2:
    return None
  budgets = list(found)
  return (power_law(budgets, [found[c]["n_opt"] for c in budgets])[0],
          power_law(budgets, [found[c]["d_opt"] for c in budgets])[0])


def bootstrap(by_budget, samples: int, rng) -> np.ndarray:
  """[k, 2] exponents (a, b) refitted on runs resampled within each budget."""
  draws = []
  for _ in range(samples):
    resampled = {c: [runs[i] for i in rng.integers(len(runs), size=len(runs))]
                 for c, runs in by_budget.items()}
    fitted = exponents(optima(resampled))
    if fitted is not None:
      draws.append(fitted)
  return np.array(draws).reshape(-1, 2)


def fit_modality(results: list[dict], metric: str, samples: int, seed: int) -> dict:
  by_budget = collections.defaultdict(list)
  for r in results:
    loss = metric_value(r, metric)
    if loss is not None and np.isfinite(loss):
      by_budget[float(r["budget"])].append({"params": r["params"], "tokens": r["tokens"],
                                            "loss": loss, "name": r["name"]})
  found = optima(by_budget)
  fitted = exponents(found)
  if fitted is None:
    raise ValueError(f"{metric}: {len(found)} budget(s) with a loss minimum over ≥ 3 sizes; "
                     "need 2 or more (add budgets or sizes around the optimum)")
  budgets = list(found)
  draws = bootstrap(by_budget, samples, np.random.default_rng(seed))
  interval = lambda column: [float(np.percentile(draws[:, column], 2.5)),
                             float(np.percentile(draws[:, column], 97.5))]
  return {"metric": metric,
          "optima": [{"budget": c, **found[c]} for c in budgets],
          "n_opt_exponent": fitted[0], "n_opt_ci95": interval(0),
          "n_opt_coefficient": power_law(budgets, [found[c]["n_opt"] for c in budgets])[1],
          "d_opt_exponent": fitted[1], "d_opt_ci95": interval(1),
          "d_opt_coefficient": power_law(budgets, [found[c]["d_opt"] for c in budgets])[1],
          "bootstrap_samples": int(len(draws)),
          "runs": {str(c): sorted(runs, key=lambda r: r["params"])
                   for c, runs in sorted(by_budget.items())}}


def fit_results(results: list[dict], metrics: dict[str, str] | None = None,
                samples: int = 1000, seed: int = 0) -> dict:
  metrics = metrics or DEFAULT_METRICS
  return {"method": METHOD,
          "modalities": {m: fit_modality(results, key, samples, seed)
                         for m, key in metrics.items()}}


def markdown_table(fit: dict) -> str:
  lines = [f"Method: {fit['method']}.", "",
           "| modality | metric | N_opt ∝ C^a | 95% CI | D_opt ∝ C^b | 95% CI | budgets |",
           "| --- | --- | ---: | --- | ---: | --- | ---: |"]
  for name, m in fit["modalities"].items():
    ci = lambda key: f"[{m[key][0]:.3f}, {m[key][1]:.3f}]"
    lines.append(f"| {name} | `{m['metric']}` | {m['n_opt_exponent']:.3f} | "
                 f"{ci('n_opt_ci95')} | {m['d_opt_exponent']:.3f} | {ci('d_opt_ci95')} | "
                 f"{len(m['optima'])} |")
  lines += ["", "| modality | budget C | N_opt | D_opt | loss at optimum | inside the grid |",
            "| --- | ---: | ---: | ---: | ---: | --- |"]
  for name, m in fit["modalities"].items():
    for o in m["optima"]:
      lines.append(f"| {name} | {o['budget']:.2e} | {o['n_opt']:.3g} | {o['d_opt']:.3g} | "
                   f"{o['loss']:.4f} | {'yes' if o['inside'] else 'no (extrapolated)'} |")
  return "\n".join(lines) + "\n"


def plot_isoflops(fit: dict, path: str) -> None:
  names = list(fit["modalities"])
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
  for ax, name in zip(axes[0], names):
    m = fit["modalities"][name]
    optima_by_budget = {o["budget"]: o for o in m["optima"]}
    for budget, runs in m["runs"].items():
      n = np.array([r["params"] for r in runs])
      loss = np.array([r["loss"] for r in runs])
      line, = ax.plot(n, loss, "o", label=f"C={float(budget):.1e}")
      if len(set(n)) >= 3:
        grid = np.linspace(np.log10(n).min() - 0.1, np.log10(n).max() + 0.1, 50)
        ax.plot(10 ** grid, np.polyval(np.polyfit(np.log10(n), loss, 2), grid), "-",
                color=line.get_color(), alpha=0.6)
      if float(budget) in optima_by_budget:
        o = optima_by_budget[float(budget)]
        ax.plot(o["n_opt"], o["loss"], "*", color=line.get_color(), markersize=12)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(m["metric"])
    ax.set_title(f"{name}: IsoFLOP curves")
    ax.legend(fontsize=7)
  fig.tight_layout()
  storage.save_figure(path, fig)
  plt.close(fig)


def plot_optima(fit: dict, path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, m in fit["modalities"].items():
    budgets = np.array([o["budget"] for o in m["optima"]])
    for ax, key in zip(axes, ("n_opt", "d_opt")):
      values = np.array([o[key] for o in m["optima"]])
      points, = ax.plot(budgets, values, "o")
      grid = np.geomspace(budgets.min(), budgets.max(), 20)
      ax.plot(grid, m[f"{key}_coefficient"] * grid ** m[f"{key}_exponent"], "-",
              color=points.get_color(),
              label=f"{name}: C^{m[f'{key}_exponent']:.2f}")
  for ax, label in zip(axes, ("N_opt", "D_opt (tokens)")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel(label)
    ax.legend()
  fig.tight_layout()
  storage.save_figure(path, fig)
  plt.close(fig)


def read_results(path: str) -> list[dict]:
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} does not exist: run `mmpretrain sweep` first")
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def write_fit(results_path: str, metrics=None, samples: int = 1000, seed: int = 0) -> dict:
  """Fits <dir>/results.jsonl and writes <dir>/fit/{fit.json, fit.md, isoflops.png,
  optima.png}; returns the fit with the output directory."""
  fit = fit_results(read_results(results_path), metrics, samples, seed)
  out = storage.join(str(epath.Path(storage.absolute(results_path)).parent), "fit")
  storage.makedirs(out)
  storage.write_json(storage.join(out, "fit.json"), fit)
  storage.write_text(storage.join(out, "fit.md"), markdown_table(fit))
  plot_isoflops(fit, storage.join(out, "isoflops.png"))
  plot_optima(fit, storage.join(out, "optima.png"))
  return {**fit, "out": out}
