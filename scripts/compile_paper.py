"""`make compile-paper`: every configs/paper/ run compiled for the TPU topology it names
(its TOPOLOGY), on this machine (libtpu, no TPU); writes the rows of its table in
docs/paper_compile.md, whose other text stays as it is. A config that also names a PROGRAM
(a representation stage's, e.g. train_rae) is compiled as that program and reported in a
table of its own.
`python scripts/compile_paper.py configs/paper/X.py …` recompiles only those runs and
replaces their rows; `--program=eval` or `--program=sample` compiles the held-out loss
step or the sampler's denoising step instead, into that program's table.

Each compile runs as its own `mmpretrain compile` process; one that does not fit is a row
that says so, not an error of the whole table.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time

from mmpretrain.scaling.sweep import model_shape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(ROOT, "configs", "paper")
OUT = os.path.join(ROOT, "docs", "paper_compile.md")
GB = 1e9


def _one_line(error: str) -> str:
  """The end of a compile's error as one table cell: a newline would end the row."""
  return " ".join(error.split())[-120:]


def _paper_modules():
  """(config path, module) of every configs/paper/*.py that names a TOPOLOGY."""
  sys.path.insert(0, PAPER)                     # the configs import their common module
  for name in sorted(os.listdir(PAPER)):
    path = os.path.join(PAPER, name)
    if not name.endswith(".py"):
      continue
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "TOPOLOGY"):
      yield os.path.relpath(path, ROOT), module


def paper_configs() -> list[tuple[str, str, dict]]:
  """(config path, topology, overrides) of the unified model's runs; an IsoFLOP grid (a
  config with a `scaling` section) is compiled at its widest model."""
  found = []
  for path, module in _paper_modules():
    if hasattr(module, "PROGRAM"):
      continue
    config = module.get_config()
    overrides = (model_shape(config.scaling, max(config.scaling.widths))
                 if "scaling" in config else {})
    found.append((path, module.TOPOLOGY, overrides))
  return found


def stage_configs() -> list[tuple[str, str, str]]:
  """(config path, topology, program) of the representation stages' configs."""
  return [(path, module.TOPOLOGY, module.PROGRAM) for path, module in _paper_modules()
          if hasattr(module, "PROGRAM")]


def compile_one(config: str, topology: str, overrides: dict, program: str = "train") -> dict:
  start = time.perf_counter()
  flags = [f"--config.{key}={value}" for key, value in overrides.items()]
  flags.append(f"--program={program}")
  out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mmpretrain"), "compile",
                        f"--config={config}", f"--topology={topology}", *flags], cwd=ROOT,
                       capture_output=True, text=True, check=False)
  if overrides:
    config += f" (width {overrides['model.d_model']})"
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if not lines:
    return {"config": config, "topology": topology, "program": program,
            "error": out.stderr.strip()[-400:]}
  return {"config": config, "seconds": time.perf_counter() - start, **json.loads(lines[-1])}


def row(r: dict) -> str:
  if "error" in r:
    return f"| {r['config']} | {r['topology']} | failed: {_one_line(r['error'])} | | | | | | |"
  if not r["fits"]:
    return (f"| {r['config']} | {r['topology']} | does not fit: {r.get('compiler', '')[:80]} "
            f"| | | | | | {r['seconds']:.0f} s |")
  if r["cost_model_mfu"] is None:
    timing = "not estimated (the layer compiles' times do not add up) | |"
  else:
    timing = f"{r['cost_model_mfu']:.2f} | {r['optimal_seconds']:.2f} s |"
  if "sampler_fits" not in r:                   # a text-only config draws no images
    sampler = "| |"
  elif r["sampler_fits"]:
    sampler = (f"{r['sampler_per_device_bytes'] / GB:.1f} GB | "
               f"{1e3 * r['sampler_step_seconds']:.0f} ms |")
  else:
    sampler = f"does not fit: {r.get('sampler_compiler', '')[:80]} | |"
  return (f"| {r['config']} | {r['topology']} | {r['per_device_bytes'] / GB:.1f} GB "
          f"| {100 * r['hbm_headroom']:.0f}% | {timing} {sampler} {r['seconds']:.0f} s |")


def stage_row(r: dict) -> str:
  where = f"| {r['config']} | {r['program']} | {r['topology']} |"
  if "error" in r:
    return f"{where} failed: {_one_line(r['error'])} | | | | |"
  if not r["fits"]:
    return (f"{where} does not fit: {r.get('compiler', '')[:80]} | | | | "
            f"{r['seconds']:.0f} s |")
  return (f"{where} {r['per_device_bytes'] / GB:.1f} GB | {100 * r['hbm_headroom']:.0f}% "
          f"| {r['optimal_seconds']:.3f} s | {r['images_per_s_per_chip']:.0f} "
          f"| {r['seconds']:.0f} s |")


def eval_row(r: dict) -> str:
  where = f"| {r['config']} | {r['topology']} |"
  if "error" in r:
    return f"{where} failed: {_one_line(r['error'])} | | | | | | |"
  if not r["fits"]:
    return (f"{where} {r['rows']} | does not fit: {r.get('compiler', '')[:80]} | | | | "
            f"| {r['seconds']:.0f} s |")
  mfu = "n/a" if r["cost_model_mfu"] is None else f"{r['cost_model_mfu']:.2f}"
  tokens = r["tokens_per_step"] / r["optimal_seconds"] / r["chips"]
  return (f"{where} {r['rows']} | {r['per_device_bytes'] / GB:.1f} GB "
          f"| {100 * r['hbm_headroom']:.0f}% | {r['optimal_seconds']:.2f} s "
          f"| {tokens / 1e3:.0f}k | {mfu} | {r['seconds']:.0f} s |")


def sample_row(r: dict) -> str:
  where = f"| {r['config']} | {r['topology']} |"
  if "error" in r:
    return f"{where} failed: {_one_line(r['error'])} | | | | |"
  if not r["fits"]:
    return (f"{where} {r['rows']} | does not fit: {r.get('compiler', '')[:80]} | | "
            f"| {r['seconds']:.0f} s |")
  return (f"{where} {r['rows']} | {r['per_device_bytes'] / GB:.1f} GB "
          f"| {100 * r['hbm_headroom']:.0f}% | {1e3 * r['step_seconds']:.0f} ms "
          f"| {r['seconds']:.0f} s |")


# Each program's table in docs/paper_compile.md: the heading it follows, and its rows.
TABLES = {"train": ("# The paper's runs, compiled for their TPU slices", row),
          "stages": ("## Representation stages", stage_row),
          "eval": ("## Held-out evaluation (`--program=eval`)", eval_row),
          "sample": ("## Sampling (`--program=sample`)", sample_row)}


def table_rows(lines: list[str], program: str) -> range:
  """Where the rows of `program`'s table lie in the doc's lines (after its header row and
  separator)."""
  heading = TABLES[program][0]
  if heading not in lines:
    raise SystemExit(f"{os.path.relpath(OUT, ROOT)} has no heading {heading!r} for the "
                     f"{program} table")
  first = next(i for i in range(lines.index(heading), len(lines)) if lines[i].startswith("| "))
  last = first + 2
  while last < len(lines) and lines[last].startswith("| "):
    last += 1
  return range(first + 2, last)


def main(program: str, only: list[str]):
  """Compiles every paper config for `program`, or with paths given only those, whose rows
  then replace theirs in that program's table; `train` also compiles the representation
  stages' configs as their PROGRAM, into their table."""
  with open(OUT, encoding="utf-8") as f:
    lines = f.read().splitlines()
  runs = {program: [(config, topology, overrides, program)
                    for config, topology, overrides in paper_configs()]}
  if program == "train":
    runs["stages"] = [(config, topology, {}, stage) for config, topology, stage
                      in stage_configs()]
  for table, jobs in runs.items():
    where = table_rows(lines, table)
    rows = ({line.split(" | ")[0][2:]: line for line in lines[where.start:where.stop]}
            if only else {})
    for config, topology, overrides, compiled in jobs:
      if only and config not in only:
        continue
      print(f"compiling {config} for {topology} (--program={compiled}) ...", flush=True)
      result = compile_one(config, topology, overrides, compiled)
      print(json.dumps(result), flush=True)
      rows[result["config"]] = TABLES[table][1](result)
    lines[where.start:where.stop] = sorted(rows.values())
  with open(OUT, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
  programs = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--program=")]
  if not set(programs) <= {"train", "eval", "sample"}:
    raise SystemExit(f"--program={programs[0]}: use train, eval or sample")
  main(programs[-1] if programs else "train",
       [os.path.relpath(os.path.abspath(arg), ROOT) for arg in sys.argv[1:]
        if not arg.startswith("--")])
