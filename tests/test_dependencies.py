"""Every third-party import is declared: the package's in install_requires or one of its
extras (never the test extra), the tests' and benchmarks' in those or the test extra. A
module that is present only as another package's dependency breaks the day that
package drops it, or on a machine set up from the declared lists alone."""
import ast
import functools
import importlib.metadata
import os
import pathlib
import re
import sys
from unittest import mock

import pytest
import setuptools

from conftest import ROOT

# Imported under a name whose distribution the installed metadata does not map.
KNOWN = {"libtpu": "jax", "jaxlib": "jax"}


def declared() -> dict[str, set[str]]:
  """{'': install_requires, extra: its requirements}, as distribution names."""
  with mock.patch.object(setuptools, "setup") as setup:
    path = os.path.join(ROOT, "setup.py")
    exec(compile(pathlib.Path(path).read_text(), path, "exec"), {"__name__": "setup"})  # pylint: disable=exec-used
  kwargs = setup.call_args.kwargs
  groups = {"": kwargs["install_requires"], **kwargs["extras_require"]}
  return {group: {_name(r) for r in requirements} for group, requirements in groups.items()}


def _name(requirement: str) -> str:
  return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported(directory: str) -> dict[str, set[str]]:
  """{top-level module: files importing it} of third-party imports under directory."""
  found: dict[str, set[str]] = {}
  for path in pathlib.Path(ROOT, directory).rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top != "mmpretrain":
          found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
  return found


@functools.cache
def _installed() -> dict[str, list[str]]:
  return importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
  names = _installed().get(module, [])
  return {n.lower().replace("_", "-") for n in names} | (
      {KNOWN[module]} if module in KNOWN else set())


@pytest.mark.parametrize("directory, groups", [
    ("mmpretrain", lambda d: set().union(*(v for k, v in d.items() if k != "test"))),
    ("tests", lambda d: set().union(*d.values())),
    ("benchmarks", lambda d: set().union(*d.values())),
])
def test_every_third_party_import_is_declared(directory, groups):
  allowed = groups(declared())
  local = {p.stem for d in ("tests", "benchmarks", "configs", "scripts")
           for p in pathlib.Path(ROOT, d).rglob("*") if p.suffix == ".py" or p.is_dir()}
  undeclared = {module: sorted(files)[:3] for module, files in imported(directory).items()
                if module not in local and not distributions(module) & allowed}
  assert not undeclared, f"imported but not declared in setup.py: {undeclared}"
