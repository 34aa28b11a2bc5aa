"""The package's layers, read from the import statements of every module (function-level
imports included): no cycles, and no import up a floor (docs/architecture.md, "Layers")."""
import ast
import os

import pytest

from conftest import ROOT

BASE = {"mmpretrain.batch", "mmpretrain.config_rules", "mmpretrain.config",
        "mmpretrain.storage", "mmpretrain.sharding", "mmpretrain.hardware", "mmpretrain.pixels",
        "mmpretrain.image_files"}
# What each lower floor may import besides itself.
ALLOWED = {
    "mmpretrain.model": BASE,
    "mmpretrain.encoders": BASE,
    "mmpretrain.tokenizers": BASE | {"mmpretrain.encoders"},
    "mmpretrain.data": BASE | {"mmpretrain.tokenizers.text"},
    "mmpretrain.diffusion": BASE,
    "mmpretrain.fid": BASE,
    "mmpretrain.vqa": BASE,
    "mmpretrain.run": BASE | {"mmpretrain.data", "mmpretrain.tokenizers", "mmpretrain.model",
                              "mmpretrain.diffusion"},
    "mmpretrain.generate": BASE | {"mmpretrain.data", "mmpretrain.tokenizers",
                                   "mmpretrain.model", "mmpretrain.diffusion"},
    "mmpretrain.train": BASE | {"mmpretrain.distributed", "mmpretrain.data", "mmpretrain.fid",
                                "mmpretrain.vqa",
                                "mmpretrain.tokenizers", "mmpretrain.encoders", "mmpretrain.model",
                                "mmpretrain.diffusion", "mmpretrain.run", "mmpretrain.generate",
                                "mmpretrain.stages", "mmpretrain.scaling"},
    # The paper's experiments plan and report runs; training them is the launchers' job.
    "mmpretrain.study": BASE | {"mmpretrain.data", "mmpretrain.tokenizers",
                                "mmpretrain.model", "mmpretrain.diffusion", "mmpretrain.run",
                                "mmpretrain.scaling"},
}


def module_graph() -> dict[str, set[str]]:
  """mmpretrain module -> the mmpretrain modules it imports."""
  paths = {}
  for directory, _, files in os.walk(os.path.join(ROOT, "mmpretrain")):
    for f in files:
      if f.endswith(".py"):
        name = os.path.relpath(os.path.join(directory, f), ROOT)[:-3].replace(os.sep, ".")
        paths[name.removesuffix(".__init__")] = os.path.join(directory, f)
  graph = {}
  for name, path in paths.items():
    imported = set()
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmpretrain"):
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          imported.add(full if full in paths else node.module)
      elif isinstance(node, ast.Import):
        imported |= {a.name for a in node.names if a.name.startswith("mmpretrain")}
    graph[name] = {m for m in imported if m in paths and m != name}
  return graph


def within(module: str, packages) -> bool:
  return any(module == p or module.startswith(p + ".") for p in packages)


def find_cycle(graph):
  state, stack = {}, []
  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    stack.pop()
    state[node] = "done"
    return None
  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_import_cycles():
  assert find_cycle(module_graph()) is None


@pytest.mark.parametrize("floor", list(ALLOWED))
def test_no_import_up_a_floor(floor):
  graph = module_graph()
  upward = sorted((m, d) for m, deps in graph.items() if within(m, [floor]) for d in deps
                  if not within(d, [floor, *ALLOWED[floor]]))
  assert not upward, upward


def test_the_shared_vocabulary_imports_only_itself():
  graph = module_graph()
  assert not sorted((m, d) for m in BASE for d in graph[m] if d not in BASE)


def test_the_checks_see_a_cycle_and_an_upward_import():
  graph = {"mmpretrain.model.a": {"mmpretrain.train.step"}, "mmpretrain.train.step":
           {"mmpretrain.model.a"}}
  assert find_cycle(graph) == ["mmpretrain.model.a", "mmpretrain.train.step",
                               "mmpretrain.model.a"]
  assert not within("mmpretrain.train.step", ["mmpretrain.model", *ALLOWED["mmpretrain.model"]])
  assert module_graph()["mmpretrain.model.transformer"] >= {"mmpretrain.model.mot"}
