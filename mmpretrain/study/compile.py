"""`mmpretrain study NAME --compile`: each distinct step of an experiment's runs compiled
for a TPU topology on this machine (libtpu, no TPU), as `mmpretrain compile` does for one
config.

Runs that differ only in what they train on, for how long or in what mixture (keys under
NOT_COMPILED) compile to the same step, so they share one compile: the five data arms of
`data_composition` are one compile, and an IsoFLOP grid is one compile per width, not
per (budget, width). Each compile runs as its own `mmpretrain compile` process: a
paper-size compile holds gigabytes, and one that fails or does not fit is a row that says
so, not the end of the others.
"""
import dataclasses
import json
import subprocess
import sys
import time

from mmpretrain.scaling.sweep import flag_value, with_overrides
from mmpretrain.study.plan import Plan, load_base
from mmpretrain.study.registry import ROOT

# Config keys that change what a run reads, how long it trains (and so warms up) or how
# often it evaluates, not the compiled step's shapes, memory or time.
NOT_COMPILED = ("train", "seed", "checkpoint", "data.mixture", "data.mixture_unit",
                "eval.every_steps", "optimizer.warmup_steps")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Step:
  """One compiled step: the plan's runs that share it, and the overrides that build it
  (the first such run's)."""
  runs: tuple
  overrides: dict


def compiled_part(config) -> str:
  """The config less NOT_COMPILED, as a canonical string: equal for runs of one step."""
  tree = config.to_dict()
  for key in NOT_COMPILED:
    *parents, last = key.split(".")
    node = tree
    for parent in parents:
      node = node[parent]
    node.pop(last, None)
  return json.dumps(tree, sort_keys=True, default=str)


def distinct_steps(plan: Plan) -> list[Step]:
  """The plan's runs grouped by the step they compile to, in plan order."""
  _, base = load_base(plan.base)
  groups = {}
  for run in plan.runs:
    groups.setdefault(compiled_part(with_overrides(base, run.overrides)), []).append(run)
  return [Step(tuple(r.name for r in runs), dict(runs[0].overrides))
          for runs in groups.values()]


def compile_step(base: str, step: Step, topology: str) -> dict:
  """`mmpretrain compile` of one step in its own process: its JSON line, or the error."""
  flags = [f"--config.{key}={flag_value(value)}" for key, value in step.overrides.items()]
  started = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "compile", f"--config={base}",
                         f"--topology={topology}", *flags], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  found = {"runs": list(step.runs), "topology": topology,
           "seconds": round(time.perf_counter() - started, 1)}
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if not lines:
    return {**found, "error": " ".join(done.stderr.split())[-300:]}
  return {**found, **json.loads(lines[-1])}


def compile_plan(plan: Plan, topology: str = "", echo=print) -> list:
  """Compiles every distinct step of `plan` for `topology` (default: the base config's
  TOPOLOGY); returns each compile's result."""
  topology = topology or plan.topology
  if not topology:
    raise ValueError(f"{plan.base} names no TOPOLOGY: give one with --topology=v5p-64")
  steps = distinct_steps(plan)
  results = []
  for i, step in enumerate(steps):
    echo(f"[{i + 1}/{len(steps)}] compiling {', '.join(step.runs)} for {topology} ...")
    results.append(compile_step(plan.base, step, topology))
    echo(json.dumps(results[-1]))
  return results


def fits(result: dict) -> bool:
  return "error" not in result and result["fits"]


def table_lines(plan: Plan, results: list) -> list[str]:
  """A markdown table: a row per compiled step, naming the runs that share it."""
  lines = [f"{plan.experiment.name} at {plan.scale} scale, --config={plan.base}:", "",
           "| runs | topology | per chip | HBM left | cost-model MFU | step (cost model) "
           "| compile |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in results:
    where = f"| {', '.join(r['runs'])} | {r['topology']} |"
    if "error" in r:
      error = " ".join(r["error"].split())[-120:]          # one cell: no newline
      lines.append(f"{where} failed: {error} | | | | {r['seconds']:.0f} s |")
    elif not r["fits"]:
      need = r.get("compiler") or f"{r['per_device_bytes'] / GB:.1f} GB"
      lines.append(f"{where} does not fit: {need[:80]} | | | | {r['seconds']:.0f} s |")
    else:
      mfu = "n/a" if r.get("cost_model_mfu") is None else f"{r['cost_model_mfu']:.2f}"
      step = "n/a" if r.get("optimal_seconds") is None else f"{r['optimal_seconds']:.2f} s"
      lines.append(f"{where} {r['per_device_bytes'] / GB:.1f} GB "
                   f"| {100 * r['hbm_headroom']:.0f}% | {mfu} | {step} | {r['seconds']:.0f} s |")
  return lines
