"""An experiment's figure and table from its runs' results.

A study's results are a sweep's (scaling/sweep.py): `<results>/results.jsonl`, one line per
finished run — its plan (experiment, arm, parameters, tokens, FLOPs) and its final and
held-out losses — which `mmpretrain sweep` appends as each run finishes in
`<results>/runs/<run name>`. A planned run without a line is reported missing and an arm
that needs what is missing is reported refused: neither drops out of the table.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mmpretrain import storage  # pylint: disable=wrong-import-position
from mmpretrain.scaling.fit import metric_value  # pylint: disable=wrong-import-position
from mmpretrain.scaling.sweep import RESULTS  # pylint: disable=wrong-import-position
from mmpretrain.study.plan import Plan  # pylint: disable=wrong-import-position

MISSING = "missing"


def read_results(plan: Plan, results_dir: str) -> dict[str, dict]:
  """The lines of <results_dir>/results.jsonl that belong to the plan's runs, by name."""
  path = storage.join(results_dir, RESULTS)
  names = {run.name for run in plan.runs}
  found = {}
  for line in storage.read_json_lines(path):
    if line.get("name") not in names:
      continue
    if (line.get("experiment"), line.get("scale")) != (plan.experiment.name, plan.scale):
      raise ValueError(f"{path} holds run {line['name']!r} of experiment "
                       f"{line.get('experiment')!r} at scale {line.get('scale')!r}: give "
                       f"--results the directory of {plan.experiment.name} at {plan.scale} scale")
    found[line["name"]] = line
  return found


def rows(plan: Plan, results: dict[str, dict]) -> list[dict]:
  """One row per planned run and per refused arm: its x, group, metrics and status."""
  axes, table = plan.experiment.axes, []
  for run in plan.runs:
    result = results.get(run.name)
    table.append({
        "run": run.name, "arm": run.plan["arm"],
        "x": run.plan["arm"] if axes.x == "arm" else run.plan[axes.x],
        "group": run.plan[axes.group] if axes.group else None,
        "metrics": {m.key: metric_value(result, m.key) if result else None
                    for m in plan.experiment.metrics},
        "status": "ok" if result else MISSING})
  for arm in plan.refused:
    table.append({"run": arm.name, "arm": arm.name,
                  "x": arm.name if axes.x == "arm" else None, "group": None,
                  "metrics": {m.key: None for m in plan.experiment.metrics},
                  "status": f"refused: needs {arm.needs}"})
  return table


def shown_metrics(plan: Plan, table: list[dict]) -> list:
  """The metrics runs report today, and any other that some result already holds."""
  return [m for m in plan.experiment.metrics
          if not m.needs or any(r["metrics"][m.key] is not None for r in table)]


def _cell(value) -> str:
  if value is None:
    return "—"
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(plan: Plan, table: list[dict]) -> str:
  e, axes = plan.experiment, plan.experiment.axes
  metrics = shown_metrics(plan, table)
  head = ["run", *([axes.x] if axes.x != "arm" else []), *([axes.group] if axes.group else []),
          *(m.label for m in metrics), "status"]
  lines = [f"# {e.name} ({plan.scale} scale)", "", e.finding, "",
           f"Base `{plan.base}`" + (f" on {plan.topology}" if plan.topology else "") + "; "
           f"{sum(r['status'] == 'ok' for r in table)} of {len(table)} runs reported.", "",
           "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in table:
    cells = [r["run"], *([_cell(r["x"])] if axes.x != "arm" else []),
             *([_cell(r["group"])] if axes.group else []),
             *(_cell(r["metrics"][m.key]) for m in metrics), r["status"]]
    lines.append("| " + " | ".join(cells) + " |")
  pending = [m for m in e.metrics if m not in metrics]
  if pending:
    lines += ["", "Not measured yet: " + "; ".join(f"{m.label} (needs {m.needs})"
                                                  for m in pending) + "."]
  return "\n".join(lines) + "\n"


def _bars(ax, table, metric) -> None:
  for i, r in enumerate(table):
    value = r["metrics"][metric.key]
    if value is not None:
      ax.bar(i, value, color="C0")
    else:
      ax.text(i, 0, "refused" if r["status"].startswith("refused") else r["status"],
              rotation=90, ha="center", va="bottom", fontsize=8, color="gray")
  ax.set_xticks(range(len(table)), [r["run"] for r in table], rotation=30, ha="right")
  ax.set_xlim(-0.6, len(table) - 0.4)


def _lines(ax, table, metric, axes) -> None:
  groups = dict.fromkeys(r["group"] for r in table if r["status"] == "ok")
  for group in groups:
    points = sorted((r["x"], r["metrics"][metric.key]) for r in table
                    if r["group"] == group and r["metrics"][metric.key] is not None)
    if points:
      x, y = np.array(points).T
      ax.plot(x, y, "o-", label=f"{axes.group}={_cell(group)}" if axes.group else None)
  if axes.log_x:
    ax.set_xscale("log")
  ax.set_xlabel(axes.x)
  if axes.group and groups:
    ax.legend(fontsize=7)


def figure(plan: Plan, table: list[dict], path: str) -> None:
  """A panel per metric: a bar per run (x = arm) or a line per group against x."""
  metrics = shown_metrics(plan, table)
  fig, axs = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axs[0], metrics):
    if plan.experiment.axes.x == "arm":
      _bars(ax, table, metric)
    else:
      _lines(ax, table, metric, plan.experiment.axes)
    ax.set_ylabel(metric.label)
  missing = [r["run"] for r in table if r["status"] != "ok"]
  title = f"{plan.experiment.name} ({plan.scale})"
  if missing:
    title += f" — no results: {', '.join(missing)}"
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  storage.save_figure(path, fig)
  plt.close(fig)


def write_report(plan: Plan, results_dir: str) -> dict:
  """<results_dir>/<experiment>.md and .png; returns their paths and the table."""
  table = rows(plan, read_results(plan, results_dir))
  name = plan.experiment.name
  md, png = (storage.join(results_dir, f"{name}.{ext}") for ext in ("md", "png"))
  storage.makedirs(results_dir)
  storage.write_text(md, markdown(plan, table))
  figure(plan, table, png)
  return {"table": md, "figure": png, "rows": table}
