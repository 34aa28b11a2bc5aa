"""The `mmpretrain` command: the only place that knows about flags, files and processes.

  mmpretrain prepare --config=configs/demo.py [--datasets=mnist_captions,emoji_captions]
  mmpretrain train   --config=configs/demo.py --workdir=runs/demo [--config.key=value ...]
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from mmpretrain import config as config_lib
from mmpretrain import hostalloc

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, samples, checkpoints).")
_DATASETS = flags.DEFINE_list("datasets", None, "prepare: only these datasets (names in "
                              "config.data.datasets); default: every dataset the config reads.")


def _config():
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  return config_lib.validate(_CONFIG.value)


def cmd_prepare():
  from mmpretrain.prepare import prepare  # pylint: disable=import-outside-toplevel
  prepare(_config(), _DATASETS.value)


def cmd_train():
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the directory that holds this run")
  from mmpretrain.train.loop import train  # pylint: disable=import-outside-toplevel
  summary = train(_config(), _WORKDIR.value)
  first, last = summary["first"], summary["last"]
  print(f"text loss: {first['text_loss']:.4f} (step 0) -> {last['text_loss']:.4f} "
        f"(step {last['step']})")
  print(f"flow loss: {first['flow_loss']:.4f} (step 0) -> {last['flow_loss']:.4f} "
        f"(step {last['step']})")
  print(f"text bits/byte: {first['text_bits_per_byte']:.3f} -> {last['text_bits_per_byte']:.3f}")
  if "samples" in summary:
    print(f"samples: {summary['samples']}")


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train}


def _run(command):
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
      COMMANDS[command]()
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
      print(f"mmpretrain {command}: error: {e}", file=sys.stderr)
      sys.exit(2)
  return main


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(f"usage: mmpretrain {{{'|'.join(COMMANDS)}}} --config=FILE [--workdir=DIR] "
          "[--config.key=value ...]", file=sys.stderr)
    sys.exit(2)
  command = argv[1]
  if command == "train":
    hostalloc.relaunch_with_jemalloc()
  app.run(_run(command), argv=[f"mmpretrain {command}"] + argv[2:])


if __name__ == "__main__":
  main()
