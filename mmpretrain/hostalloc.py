"""Run on jemalloc that keeps freed pages: XLA:CPU's step temporaries stop page-faulting.

XLA:CPU mallocs each step's temporaries (logits, attention scores, activations) and frees
them when the step ends. glibc serves every block over 32 MiB with a fresh mmap, so the
kernel zero-fills those pages again on every step: on dense_ref that is ~900k page faults
and ~1.5 CPU-seconds per step (docs/benchmarks.md). jemalloc with page decay disabled
keeps freed pages mapped and hands them out again.

The allocator has to be in place when the process starts, so `relaunch_with_jemalloc()`
re-executes the current command once with LD_PRELOAD set; `python -m mmpretrain.hostalloc
CMD ...` runs any command that way. MMPRETRAIN_ALLOCATOR=system keeps the system malloc.
"""
import ctypes.util
import os
import sys

JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"   # never return freed pages to the OS
_MISSING_HINT = ("mmpretrain: jemalloc not found, using the system malloc (XLA:CPU steps run "
                 "~1.3x slower). Install it with `bash scripts/system_packages.sh` "
                 "(apt libjemalloc2) or set MMPRETRAIN_ALLOCATOR=system to silence this.")


def allocator_env(environ, library: str | None) -> dict | None:
  """The environment to relaunch with, or None when no relaunch is wanted or possible."""
  preload = environ.get("LD_PRELOAD", "")
  if environ.get("MMPRETRAIN_ALLOCATOR") == "system" or "jemalloc" in preload or not library:
    return None
  env = dict(environ)
  env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
  env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
  return env


def _library() -> str | None:
  return ctypes.util.find_library("jemalloc")


def relaunch_with_jemalloc() -> None:
  """Re-executes this process under jemalloc unless it already runs there (or opted out)."""
  library = _library()
  env = allocator_env(os.environ, library)
  if env is None:
    if library is None and os.environ.get("MMPRETRAIN_ALLOCATOR") != "system":
      print(_MISSING_HINT, file=sys.stderr)
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main(argv: list[str]) -> None:
  if not argv:
    raise SystemExit("usage: python -m mmpretrain.hostalloc COMMAND [ARG ...]")
  env = allocator_env(os.environ, _library()) or dict(os.environ)
  os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
  main(sys.argv[1:])
