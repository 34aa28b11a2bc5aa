"""Every config file under configs/ loads and validates as shipped, the way `mmpretrain`
reads it (config_flags, then config.validate), with each argument it is documented with,
and every key of a config can be set with --config.<key>=value."""
import glob
import importlib.util
import os

import pytest
from absl import flags
from ml_collections import config_flags

# The CLI's module registers the config_flags parsers it reads overrides with.
from mmpretrain import cli  # pylint: disable=unused-import
from mmpretrain import config as config_lib
from mmpretrain import config_rules

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


def rendered(value) -> str:
  """`value` as written after --config.<key>= (a string as is, the rest as literals)."""
  return value if isinstance(value, str) else repr(value)


# Keys whose default None means "automatic", with a value of the type they take.
AUTOMATIC = {"diffusion.time_shift": 1.5, "eval.batch_size": 16}


def changed(value, key: str = ""):
  """Another value of the same type, to tell an override that took from one ignored."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 1
  if isinstance(value, str):
    return value + "_x"
  if isinstance(value, tuple):
    return value + value[:1] if value else ("x",)
  if value is None:
    return AUTOMATIC[key]
  raise AssertionError(f"no command-line form for {value!r}")


def assert_overrides_take(config: str, want: dict) -> None:
  overrides = [f"--config.{key}={rendered(value)}" for key, value in want.items()]
  got = dict(config_rules.leaves(parse_config_flags(config, *overrides)))
  wrong = {key: got[key] for key, value in want.items()
           if got[key] != value or type(got[key]) is not type(value)}
  assert not wrong, f"overrides that did not take: {wrong}"


@pytest.mark.parametrize("relative", ["base.py", "demo.py"])
@pytest.mark.parametrize("change", [False, True], ids=["same", "changed"])
def test_every_key_is_set_by_its_command_line_override(relative, change):
  path = os.path.join(CONFIGS, relative)
  want = dict(config_rules.leaves(config_lib.load_config(path)))
  assert_overrides_take(path, {k: changed(v, k) for k, v in want.items()} if change else want)


@pytest.mark.parametrize("relative, arg", SHIPPED,
                         ids=[f"{r}:{a}" if a else r for r, a in SHIPPED])
def test_every_key_of_a_shipped_config_takes_its_own_value_back(relative, arg):
  path = os.path.join(CONFIGS, relative)
  config = f"{path}:{arg}" if arg else path
  assert_overrides_take(config, dict(config_rules.leaves(parse_config_flags(config))))
