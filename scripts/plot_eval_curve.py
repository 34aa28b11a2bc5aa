"""Plots a run's evaluation metrics over training steps as one PNG.

  python scripts/plot_eval_curve.py --workdir=runs/world_model --out=curve.png \\
      --keys=world_model/agent_accuracy@1,world_model/agent_accuracy@4,world_model/agent_accuracy@8 \\
      --baseline=world_model/copy_last_frame/

Each key is drawn from the `eval/<key>` records of <workdir>/metrics.jsonl; with
`--baseline=PREFIX`, the same key under PREFIX is drawn dashed in the same colour.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpretrain import storage  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--keys", required=True, help="comma-separated evaluation keys")
  parser.add_argument("--baseline", default="", help="prefix of the baseline's keys")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  records = [r for r in storage.read_json_lines(storage.join(args.workdir, "metrics.jsonl"))
             if any(k.startswith("eval/") for k in r)]
  if not records:
    sys.exit(f"no evaluation records in {args.workdir}/metrics.jsonl")
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for i, key in enumerate(args.keys.split(",")):
    name = key.split("/")[-1]
    steps = [r["step"] for r in records if f"eval/{key}" in r]
    ax.plot(steps, [r[f"eval/{key}"] for r in records if f"eval/{key}" in r], "o-",
            color=f"C{i}", label=f"model {name}")
    if args.baseline:
      base = f"eval/{args.baseline}{name}"
      ax.plot(steps, [r[base] for r in records if base in r], "--", color=f"C{i}",
              label=f"baseline {name}")
  ax.set_xlabel("step")
  ax.legend(fontsize=7)
  fig.tight_layout()
  storage.save_figure(args.out, fig)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
