"""What `mmpretrain study --list` and `--plan` print."""
from mmpretrain.scaling.sweep import flag_value
from mmpretrain.study.plan import Plan
from mmpretrain.study.registry import EXPERIMENTS


def experiment_lines() -> list[str]:
  """One line per experiment: its name, its runs' count and its question."""
  width = max(map(len, EXPERIMENTS))
  lines = []
  for e in EXPERIMENTS.values():
    refused = sum(bool(a.needs) for a in e.arms)
    arms = f"{len(e.arms)} arms" + (f", {refused} not runnable yet" if refused else "")
    if e.isoflop:
      arms = "an IsoFLOP grid" + ("" if len(e.arms) == 1 else f" × {len(e.arms)} arms")
    lines.append(f"{e.name:<{width}}  [{arms}] {e.finding}")
  return lines


def _count(n: float) -> str:
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
    if n >= scale:
      return f"{n / scale:.3g}{suffix}"
  return f"{n:.3g}"


def plan_lines(plan: Plan) -> list[str]:
  """The plan as a table: a row per run (its overrides below it), a row per refused arm."""
  e = plan.experiment
  lines = [f"{e.name} at {plan.scale} scale: {len(plan.runs)} runs of --config={plan.base}"
           + (f" on {plan.topology}" if plan.topology else " (no TOPOLOGY: a local run)"),
           f"  {e.finding}",
           "  FLOPs: 6·N_active (both heads) + dense attention, per slot of every step "
           "(scaling/flops.py's train_flops_per_token)", ""]
  width = max([len(r.name) for r in plan.runs] + [len(a.name) for a in plan.refused] + [3])
  lines.append(f"{'run':<{width}}  {'params':>7}  {'active N':>8}  {'steps':>9}  "
               f"{'tokens':>7}  {'FLOPs':>8}  topology")
  for run in plan.runs:
    p = run.plan
    lines.append(f"{run.name:<{width}}  {_count(p['total_params']):>7}  "
                 f"{_count(p['params']):>8}  {p['steps']:>9,}  {_count(p['tokens']):>7}  "
                 f"{p['flops']:>8.2e}  {p['topology'] or '-'}")
    flags = " ".join(f"--config.{k}={flag_value(v)}" for k, v in run.overrides.items())
    lines.append(f"{'':<{width}}  {flags or '(the base config)'}")
  for arm in plan.refused:
    lines.append(f"{arm.name:<{width}}  refused: needs {arm.needs}")
  return lines
