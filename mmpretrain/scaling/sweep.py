"""Sweeps: IsoFLOP grids and ablation grids as runs of `mmpretrain train`.

An IsoFLOP config (one with a `scaling` section, e.g. configs/scaling/isoflop.py) expands
budgets × widths: each width becomes a model shape by the config's rules (depth, heads
and FFN from the width), and each (budget, shape) a run whose step count spends the
budget in model FLOPs (scaling/flops.py on the token counts of the config's own data). An
ablation config (one whose module lists VARIANTS, e.g. configs/ablations/granularity.py)
expands to one run per variant.

Runs go one after another here (each a `mmpretrain train` subprocess, so a killed sweep
re-run resumes the unfinished run from its checkpoint and skips finished ones), or are
printed as TPU launcher commands. Each finished run adds a line to <out>/results.jsonl:
its plan (budget, parameters, steps, tokens and FLOPs per modality) and its final and
held-out losses.
"""
import copy
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

from mmpretrain.data import pipeline
from mmpretrain.scaling.flops import matmul_params, mean_token_counts, step_flops
from mmpretrain.tokenizers.visual import row_spec

RESULTS = "results.jsonl"
PLAN = "plan.json"
LAUNCHERS = ("local", "tpu")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str                 # the --config argument: path[:arg]
  overrides: dict             # config key -> value, passed as --config.<key>=<value>
  plan: dict                  # what the run is for (budget, parameters, steps, ...)


def model_shape(scaling, width: int) -> dict:
  """Model keys for a width: depth = width / scaling.width_per_layer (at least 1), heads
  of scaling.head_dim, FFN scaling.mlp_ratio × width rounded to a multiple of 32."""
  if width % scaling.head_dim:
    raise ValueError(f"scaling.widths: {width} is not a multiple of scaling.head_dim="
                     f"{scaling.head_dim}")
  heads = width // scaling.head_dim
  return {"model.d_model": width,
          "model.num_layers": max(1, round(width / scaling.width_per_layer)),
          "model.num_heads": heads, "model.num_kv_heads": heads,
          "model.head_dim": scaling.head_dim,
          "model.mlp_dim": 32 * max(1, round(scaling.mlp_ratio * width / 32))}


def with_overrides(config, overrides: dict):
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    section, name = key.rsplit(".", 1)
    node = config
    for part in section.split("."):
      node = node[part]
    node[name] = value
  return config


def isoflop_plan(config, config_arg: str) -> list[Run]:
  """budgets × widths -> runs that spend each budget (model FLOPs) at each width, counted
  on the config's own packed batches."""
  s = config.scaling
  tok = pipeline.load_tokenizer(config)
  batches = pipeline.make_batches(config, tok, row_spec(config))
  counts = mean_token_counts([next(batches) for _ in range(s.count_batches)])

  def per_step(sized, params) -> dict:
    flops = step_flops(sized, counts, params)
    return {"text_tokens": counts.text, "visual_tokens": counts.visual,
            "tokens": counts.text + counts.visual, "text_flops": flops.text,
            "visual_flops": flops.visual, "flops": flops.model}
  return isoflop_grid(config, config_arg, per_step)


def isoflop_grid(config, config_arg: str, per_step) -> list[Run]:
  """budgets × widths -> runs; `per_step(sized config, MatmulParams)` gives a step's figures
  for the plan (tokens, FLOPs, ...), whose "flops" each run's steps spend its budget in."""
  s = config.scaling
  runs = []
  for width in s.widths:
    shape = model_shape(s, width)
    sized = with_overrides(config, shape)
    params = matmul_params(sized)
    step = per_step(sized, params)
    for budget in s.budgets:
      steps = int(round(budget / step["flops"]))
      if steps < s.min_steps:
        continue              # too big for this budget: fewer steps than warmup makes sense
      overrides = {**shape, "train.num_steps": steps,
                   "optimizer.warmup_steps": max(1, int(s.warmup_fraction * steps)),
                   "eval.every_steps": steps, "eval.generative": (),
                   "checkpoint.every_steps": max(1, steps // s.checkpoints_per_run),
                   "train.log_every": max(1, steps // 20)}
      runs.append(Run(
          name=f"c{budget:.2g}_d{width}".replace("+", ""), config=config_arg,
          overrides=overrides,
          plan={"budget": budget, "width": width, "layers": shape["model.num_layers"],
                "params": params.decoder, "params_with_heads": params.decoder
                + params.lm_head + params.flow_head, "steps": steps,
                **{key: steps * value for key, value in step.items()}}))
  if not runs:
    raise ValueError("no run fits: every width needs fewer than scaling.min_steps steps; "
                     "raise scaling.budgets or lower scaling.widths")
  return sorted(runs, key=lambda r: (s.budgets.index(r.plan["budget"]),
                                     s.widths.index(r.plan["width"])))


def config_variants(path: str) -> tuple[str, ...] | None:
  """The VARIANTS an ablation config file lists (None if it lists none)."""
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return getattr(module, "VARIANTS", None)


def ablation_plan(config_arg: str) -> list[Run]:
  """One run per variant of `path[:,suffix]` (e.g. granularity.py or granularity.py:,runlocal)."""
  path, _, arg = config_arg.partition(":")
  variants = config_variants(path)
  if not variants:
    raise ValueError(f"{path} has no `scaling` section and lists no VARIANTS: nothing to "
                     "sweep")
  suffix = arg[arg.index(","):] if "," in arg else ""
  stem = os.path.splitext(os.path.basename(path))[0]
  return [Run(name=f"{stem}_{v}", config=f"{path}:{v}{suffix}", overrides={},
              plan={"variant": v}) for v in variants]


def flag_value(value) -> str:
  return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


def train_command(run: Run, workdir: str, overrides: dict) -> list[str]:
  """`mmpretrain train` flags of a run (sweep-wide overrides last, so they win)."""
  flags = {**run.overrides, **overrides}
  return ["train", f"--config={run.config}", f"--workdir={workdir}",
          *[f"--config.{k}={flag_value(v)}" for k, v in flags.items()]]


def finished(out: str) -> dict[str, dict]:
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {r["name"]: r for r in map(json.loads, f) if r}


def trained(workdir: str) -> bool:
  """Whether a run's last invocation trained to its end (a resumed, already finished run
  rewrites its summary without steps, so this is checked before re-launching)."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    summary = json.load(f)
  return summary["last"] is not None and not summary["preempted"]


def collect(run: Run, workdir: str) -> dict:
  """A finished run's line of results.jsonl: its plan, final train losses, held-out losses."""
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  last = summary["last"] or {}
  return {"name": run.name, "config": run.config, **run.plan,
          "final": {k: last[k] for k in ("text_loss", "flow_loss", "text_bits_per_byte")
                    if k in last},
          "eval": {k: v for k, v in (summary["eval"] or {}).items() if k != "step"}}


def run_sweep(runs: list[Run], out: str, launcher: str = "local", overrides=None,
              echo=print) -> list[dict]:
  """Runs (or prints the TPU launch of) every run not yet in <out>/results.jsonl; returns
  the results of all finished runs."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"launcher {launcher!r}: use one of {LAUNCHERS}")
  overrides = overrides or {}
  if launcher == "tpu":       # `out` is usually gs://…: the pod writes there, not this host
    for run in runs:
      command = train_command(run, f"{out}/runs/{run.name}", overrides)
      echo(" ".join(["tpu_scripts/launch.sh", *command[1:]]))
    return []
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, PLAN), "w", encoding="utf-8") as f:
    json.dump([dataclasses.asdict(r) for r in runs], f, indent=2)
  done = finished(out)
  for i, run in enumerate(runs):
    workdir = os.path.join(out, "runs", run.name)
    if run.name in done:
      echo(f"[{i + 1}/{len(runs)}] {run.name}: done")
      continue
    echo(f"[{i + 1}/{len(runs)}] {run.name}: {json.dumps(run.plan)}")
    if not trained(workdir):    # else it finished but was not collected: collect it now
      subprocess.run([sys.executable, "-m", "mmpretrain.cli",
                      *train_command(run, workdir, overrides)], check=True)
    result = collect(run, workdir)
    with open(os.path.join(out, RESULTS), "a", encoding="utf-8") as f:
      f.write(json.dumps(result) + "\n")
    done[run.name] = result
  return [done[r.name] for r in runs if r.name in done]
