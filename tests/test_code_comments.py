"""No measured figure in a code comment or docstring: times, sizes, rates and MFU go stale
in code, so they live in docs/ beside the command that made them, and a comment gives the
reason in a clause and points there. Shapes (64×64), settings and derived counts stay."""
import io
import pathlib
import re
import tokenize

import pytest

from conftest import ROOT

# A number, a space and a unit of time, memory or rate (as figures are written here; a
# device's name such as "H100 80GB" is not one), or an MFU value.
MEASURED = re.compile(
    r"\d[\d.,]* (?:ms|µs|us|GB|TB|GFLOP/s|TFLOP/s|tokens/s|images/s|frames/s|records/s|"
    r"steps/s)\b|\d\.\d+ s (?:a|per) step|\bMFU (?:of )?\d")


def comments(path: pathlib.Path):
  """(line, text) of every comment and docstring of a Python file."""
  source = path.read_text(encoding="utf-8")
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT or (token.type == tokenize.STRING
                                          and token.string.startswith(('"""', "'''"))):
      for offset, line in enumerate(token.string.splitlines()):
        yield token.start[0] + offset, line


FILES = sorted(p for d in ("mmpretrain", "configs") for p in pathlib.Path(ROOT, d).rglob("*.py"))


def test_the_pattern_catches_figures_and_spares_shapes():
  assert MEASURED.search("# a layer takes 126 ms that way")
  assert MEASURED.search("(1.66 s a step against 1.74 s, 61 GB a chip)")
  assert MEASURED.search("MFU 0.33")
  assert not MEASURED.search("# 64×64 renders in 8×8-pixel patches, 32 MiB blocks")
  assert not MEASURED.search("'NVIDIA H100 80GB HBM3'")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_measured_figure_in_a_comment(path):
  found = [f"{n}: {line.strip()}" for n, line in comments(path) if MEASURED.search(line)]
  assert not found, "move these figures to docs/ and point there:\n" + "\n".join(found)
