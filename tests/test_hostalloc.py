"""The jemalloc relaunch: when it happens, and what the new environment holds."""
import os
import subprocess
import sys

import pytest

from mmpretrain import hostalloc

LIB = "libjemalloc.so.2"


def test_relaunch_env_preloads_jemalloc_and_keeps_pages():
  env = hostalloc.allocator_env({"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}, LIB)
  assert env["LD_PRELOAD"] == f"{LIB}:libfoo.so"
  assert env["MALLOC_CONF"] == hostalloc.JEMALLOC_CONF
  assert env["PATH"] == "/bin"


def test_user_malloc_conf_wins():
  env = hostalloc.allocator_env({"MALLOC_CONF": "narenas:2"}, LIB)
  assert env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.parametrize("environ,library", [
    ({"LD_PRELOAD": f"/usr/lib/{LIB}"}, LIB),          # already running on it: no loop
    ({"MMPRETRAIN_ALLOCATOR": "system"}, LIB),        # opted out
    ({}, None),                                       # not installed
])
def test_no_relaunch(environ, library):
  assert hostalloc.allocator_env(environ, library) is None


@pytest.mark.skipif(hostalloc._library() is None, reason="jemalloc is not installed")
def test_module_runs_a_command_under_jemalloc():
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
  out = subprocess.run(
      [sys.executable, "-m", "mmpretrain.hostalloc", sys.executable, "-c",
       "import os; print(os.environ['LD_PRELOAD']); print(open('/proc/self/maps').read())"],
      env=env, capture_output=True, text=True, check=True).stdout
  assert out.splitlines()[0].startswith("libjemalloc")
  assert "libjemalloc" in out.split("\n", 1)[1]      # really mapped into the process
