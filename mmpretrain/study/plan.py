"""An experiment at a scale as runs: the base config with each arm's overrides (an IsoFLOP
experiment's arm becomes scaling/sweep.py's grid of budgets × widths), each counted
without reading data — parameters, tokens and model FLOPs.

FLOPs are flops.train_flops_per_token × tokens, tokens being every slot of every step
(the run's steps × config.tokens_per_step): 6·N_active with both heads plus the dense L×L
attention, the count `mmpretrain compile` gives MFU by. `mmpretrain sweep` instead counts
the config's own packed batches (masked pairs, each token's own head), which needs the
data prepared; the plan is meant to run anywhere, before any data exists.
"""
import dataclasses
import importlib.util
import os

import numpy as np
from flax import nnx

from mmpretrain import config as config_lib
from mmpretrain.run import build_model
from mmpretrain.scaling import flops, sweep
from mmpretrain.study.registry import ROOT, Arm, Experiment, check_scale


@dataclasses.dataclass(frozen=True)
class Plan:
  experiment: Experiment
  scale: str
  base: str                   # the --config argument of every run, path[:arg]
  topology: str               # the base config's TOPOLOGY ("" where it names none)
  runs: list                  # sweep.Run: name, config, overrides, plan (the figures)
  refused: list               # the arms that need what is missing


def load_base(config_arg: str):
  """(module, config) of `path[:arg]`, the path from the repository root."""
  path, _, arg = config_arg.partition(":")
  full = os.path.join(ROOT, path)
  if not os.path.exists(full):
    raise FileNotFoundError(f"base config {path} is not in {ROOT}: the study reads the "
                            "repository's configs/")
  spec = importlib.util.spec_from_file_location(
      "_study_" + os.path.splitext(os.path.basename(path))[0], full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, (module.get_config(arg) if arg else module.get_config())


def arm_config(base, overrides: dict):
  """The base with an arm's overrides: each key must exist (as the CLI's --config.<key>
  must), and the result must pass validation."""
  for key in overrides:
    config_lib.check_key_exists(base, key)
  return config_lib.validate(sweep.with_overrides(base, overrides))


def total_params(config) -> int:
  """Every parameter of the unified model: embeddings, all experts, both heads (the frozen
  representation is not the model's)."""
  model = nnx.eval_shape(lambda: build_model(config, 0))
  return int(sum(np.prod(p.shape) for _, p in nnx.to_flat_state(nnx.state(model, nnx.Param))))


def step_figures(config, params: flops.MatmulParams) -> dict:
  """One step's tokens (every slot, config.tokens_per_step) and model FLOPs."""
  slots = config_lib.tokens_per_step(config)
  return {"tokens": slots, "flops": slots * flops.train_flops_per_token(config, params)}


def config_value(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def figures(config, arm: Arm, experiment: Experiment, scale: str, topology: str) -> dict:
  """What a run is, beside its overrides: experiment, arm, scale, topology, parameters and
  the x of the experiment's figure when that is a config key."""
  moe = config.model.moe
  found = {"experiment": experiment.name, "arm": arm.name, "scale": scale,
           "topology": topology, "total_experts": moe.num_experts * moe.granularity}
  x = experiment.axes.x
  if "." in x:
    found[x] = config_value(config, x)
  return found


def isoflop_runs(config, base_arg: str, arm: Arm, overrides: dict, budgets: tuple,
                 extra: dict) -> list:
  """The arm's IsoFLOP grid (sweep.isoflop_grid) with steps counted as the plan counts."""
  if budgets:
    config = sweep.with_overrides(config, {"scaling.budgets": tuple(budgets)})
  total = {}

  def per_step(sized, params):
    total[sized.model.d_model] = total_params(sized)
    return step_figures(sized, params)
  grid = sweep.isoflop_grid(config, base_arg, per_step)
  return [sweep.Run(name=f"{arm.name}_{r.name}", config=base_arg,
                    overrides={**overrides, **r.overrides},
                    plan={**extra, "total_params": total[r.plan["width"]], **r.plan})
          for r in grid]


def plan(experiment: Experiment, scale: str) -> Plan:
  """Every run of `experiment` at `scale`, and the arms it cannot run yet."""
  base_arg = experiment.bases[check_scale(scale)]
  module, base = load_base(base_arg)
  topology = getattr(module, "TOPOLOGY", "")
  runs, refused = [], []
  for arm in experiment.arms:
    if arm.needs:
      refused.append(arm)
      continue
    where = f"{experiment.name} at {scale} scale, arm {arm.name}"
    try:
      runs += arm_runs(experiment, scale, base, base_arg, arm, topology)
    except FileNotFoundError as e:                   # the CLI's one-line errors
      raise FileNotFoundError(f"{where}: {e}") from e
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e
  return Plan(experiment, scale, base_arg, topology, runs, refused)


def arm_runs(experiment: Experiment, scale: str, base, base_arg: str, arm: Arm,
             topology: str) -> list:
  overrides = arm.overrides(scale)
  config = arm_config(base, overrides)
  extra = figures(config, arm, experiment, scale, topology)
  if experiment.isoflop:
    return isoflop_runs(config, base_arg, arm, overrides, experiment.budgets[scale], extra)
  params = flops.matmul_params(config)
  step = step_figures(config, params)
  steps = config_lib.train_steps(config)          # train.num_steps, or train.tokens' steps
  return [sweep.Run(name=arm.name, config=base_arg, overrides=overrides, plan={
      **extra, "total_params": total_params(config), "params": params.decoder,
      "params_with_heads": flops.active_matmul_params(config, params), "steps": steps,
      **{key: steps * value for key, value in step.items()}})]
