"""`python -m mmpretrain.logship PATH`: copies its standard input to standard output and to
the log at PATH, which may be on an object store (gs://…), where it is published in parts
(storage.LineLog). TPU workers pipe the trainer's output through it, so the logs outlive a
preempted VM: tpu_scripts/worker_train.sh."""
import sys

from mmpretrain import storage


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit("usage: python -m mmpretrain.logship PATH  (copies stdin to stdout and PATH)")
  storage.makedirs(storage.parent(argv[1]))
  log = storage.LineLog(argv[1], part_lines=200, part_seconds=30.0)
  try:
    for line in sys.stdin:
      sys.stdout.write(line)
      sys.stdout.flush()
      log.write(line)
  finally:
    log.close()


if __name__ == "__main__":
  main(sys.argv)
