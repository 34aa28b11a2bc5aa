"""`make compile-paper`: every configs/paper/ run compiled for the TPU topology it names
(its TOPOLOGY), on this machine (libtpu, no TPU); writes docs/paper_compile.md.
`python scripts/compile_paper.py configs/paper/X.py …` recompiles only those runs and
replaces their rows.

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


def paper_configs() -> list[tuple[str, str, dict]]:
  """(config path, topology, overrides) of every configs/paper/*.py that names a TOPOLOGY;
  an IsoFLOP grid (a config with a `scaling` section) is compiled at its widest model."""
  found = []
  sys.path.insert(0, PAPER)                     # the configs import their common module
  for name in sorted(os.listdir(PAPER)):
    path = os.path.join(PAPER, name)
    if not name.endswith(".py"):
      continue
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "TOPOLOGY"):
      continue
    config = module.get_config()
    overrides = (model_shape(config.scaling, max(config.scaling.widths))
                 if "scaling" in config else {})
    found.append((os.path.relpath(path, ROOT), module.TOPOLOGY, overrides))
  return found


def compile_one(config: str, topology: str, overrides: dict) -> dict:
  start = time.perf_counter()
  flags = [f"--config.{key}={value}" for key, value in overrides.items()]
  out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mmpretrain"), "compile",
                        f"--config={config}", f"--topology={topology}", *flags], cwd=ROOT,
                       capture_output=True, text=True, check=False)
  if overrides:
    config += f" (width {overrides['model.d_model']})"
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if not lines:
    return {"config": config, "topology": topology, "error": out.stderr.strip()[-400:]}
  return {"config": config, "seconds": time.perf_counter() - start, **json.loads(lines[-1])}


def row(r: dict) -> str:
  if "error" in r:
    return f"| {r['config']} | {r['topology']} | failed: {r['error'][-120:]} | | | | | | |"
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


def write_table(rows: list[str]) -> None:
  table = "\n".join(rows)
  with open(OUT, "w", encoding="utf-8") as f:
    f.write(f"""# The paper's runs, compiled for their TPU slices

Written by `make compile-paper` (scripts/compile_paper.py): each configs/paper/ run compiled
with `mmpretrain compile` for the topology it names, on a CPU machine with libtpu (no TPU).
Memory is the compiled step's per-chip total (arguments + outputs + temporaries − donated)
against the chip's HBM (v5p: 95 GiB); the step time and MFU are the TPU cost model's
(docs/tpu.md says how they are estimated: the chunked attention's loops are costed as
the kernel's blocks, and every matmul whole, not as XLA's windowed loops). MFU counts model FLOPs as
6·N_active per token plus 12·layers·heads·head_dim·seq_len for attention (PaLM's
convention). An IsoFLOP grid's row is its widest model.

The sampler columns are one denoising step of the image sampler (generate/sample.py:
`diffusion.sample_steps` of them draw an image): a frame's block of latent tokens against
a KV cache of a full row (`data.seq_len` slots), for `data.batch_size` rows, half of them
classifier-free guidance's unconditional twins, with the weights gathered over the batch
axes once per image rather than on every step.

| config | topology | per chip | HBM left | cost-model MFU | step (cost model) \
| sampler per chip | denoising step | compile + estimate |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{table}
""")
  print(f"wrote {os.path.relpath(OUT, ROOT)}")


def main(only: list[str]):
  """Compiles every paper config, or with paths given only those, whose rows then replace
  theirs in the existing table."""
  rows = {}
  if only and os.path.exists(OUT):
    with open(OUT, encoding="utf-8") as f:
      rows = {line.split(" | ")[0][2:]: line for line in f.read().splitlines()
              if line.startswith("| configs/paper/")}
  for config, topology, overrides in paper_configs():
    if only and config not in only:
      continue
    print(f"compiling {config} for {topology} ...", flush=True)
    result = compile_one(config, topology, overrides)
    print(json.dumps(result), flush=True)
    rows[result["config"]] = row(result)
  write_table(sorted(rows.values()))


if __name__ == "__main__":
  main([os.path.relpath(os.path.abspath(path), ROOT) for path in sys.argv[1:]])
