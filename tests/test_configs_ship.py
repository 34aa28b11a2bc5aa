"""Every config file under configs/ loads and validates as shipped, the way `mmpretrain`
reads it (config_flags, then config.validate), with each argument it is documented with."""
import glob
import importlib.util
import os

import pytest
from absl import flags
from ml_collections import config_flags

from mmpretrain import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
# Arguments named in a config's docstring or by its callers, beyond the VARIANTS (ablations,
# each also with ',runlocal') and ARMS (visual_rep.py) a module lists itself.
DOCUMENTED_ARGS = {"base.py": ("runlocal",), "bench/moe_ref.py": ("fine",)}


def config_files() -> list[str]:
  """configs/-relative paths of the files that define get_config (not their helpers)."""
  files = []
  for path in sorted(glob.glob(os.path.join(CONFIGS, "**", "*.py"), recursive=True)):
    with open(path, encoding="utf-8") as f:
      if "\ndef get_config(" in f.read():
        files.append(os.path.relpath(path, CONFIGS))
  return files


def config_args(relative: str) -> list:
  spec = importlib.util.spec_from_file_location("_args_" + relative.replace("/", "_")[:-3],
                                                os.path.join(CONFIGS, relative))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  variants = getattr(module, "VARIANTS", ())
  return [None, *DOCUMENTED_ARGS.get(relative, ()), *variants,
          *(f"{v},runlocal" for v in variants), *getattr(module, "ARMS", ())]


def parse_config_flags(config: str, *overrides: str):
  """The config `mmpretrain VERB --config=<config> <overrides>` reads (cli._CONFIG's flag,
  on flag values of its own)."""
  argv = ["mmpretrain", f"--config={config}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


SHIPPED = [(relative, arg) for relative in config_files() for arg in config_args(relative)]


def test_every_config_file_is_found():
  found = {relative for relative, _ in SHIPPED}
  assert {"base.py", "demo.py", "examples/own_corpus.py", "paper/moe_1b.py",
          "ablations/ffn_type.py", "stages/rae_demo.py"} <= found
  assert not {"ablations/common.py", "paper/paper_common.py"} & found


@pytest.mark.parametrize("relative, arg", SHIPPED,
                         ids=[f"{r}:{a}" if a else r for r, a in SHIPPED])
def test_shipped_config_validates(relative, arg):
  path = os.path.join(CONFIGS, relative)
  config_lib.validate(parse_config_flags(f"{path}:{arg}" if arg else path))
