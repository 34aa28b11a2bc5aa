"""`make vqa-mini`: the paper's VQA-data comparison in miniature (configs/vqa_mini.py).

For each seed: pretrain on general data, fine-tune it on MiniGrid VQA, and train the same
VQA steps from scratch; both VQA runs see the same VQA tokens. Every run is a plain
`mmpretrain` command in its own workdir, so a re-run skips what is finished. Writes
runs/vqa_mini/results.json, results.md (the table) and answers.png (held-out questions
with both arms' answers).

  python scripts/vqa_mini.py [--seeds=0,1] [--out=runs/vqa_mini]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=wrong-import-position
from mmpretrain import config as config_lib
from mmpretrain import storage

CONFIG = os.path.join(ROOT, "configs", "vqa_mini.py")
ARMS = ("finetuned", "scratch")
METRICS = ("accuracy", "exact_match")
SHOWN = 8                      # held-out questions in answers.png


def mmpretrain(*args: str) -> None:
  command = [sys.executable, "-m", "mmpretrain.cli", *args]
  print("+ mmpretrain " + " ".join(args), flush=True)
  subprocess.run(command, check=True, cwd=ROOT)


def run_seed(out: str, seed: int) -> dict:
  general = f"{out}/general_s{seed}"
  mmpretrain("train", f"--config={CONFIG}:general", f"--workdir={general}",
             f"--config.seed={seed}")
  mmpretrain("finetune", f"--config={CONFIG}:vqa", f"--workdir={out}/finetuned_s{seed}",
             f"--config.seed={seed}", f"--config.train.init_from={general}")
  mmpretrain("train", f"--config={CONFIG}:vqa", f"--workdir={out}/scratch_s{seed}",
             f"--config.seed={seed}")
  scores = {}
  for arm in ARMS:
    logged = storage.read_json_lines(f"{out}/{arm}_s{seed}/metrics.jsonl")
    final = [m for m in logged if "eval/vqa/minigrid_vqa/accuracy" in m][-1]
    scores[arm] = {m: final[f"eval/vqa/minigrid_vqa/{m}"] for m in METRICS}
  return scores


def question_prior(count: int) -> dict:
  """The scores of answering each held-out question with the answer its question text got
  most often in the train split, image unseen: what a model that ignores the image reaches."""
  # pylint: disable=import-outside-toplevel
  import collections
  from mmpretrain.data import pipeline, streams
  from mmpretrain.vqa.accuracy import exact_match, vqa_accuracy
  config = config_lib.load_config(CONFIG, "vqa")
  read = lambda split: pipeline.dataset_records(config, "minigrid_vqa", split)
  train = read("train")
  by_question = collections.defaultdict(collections.Counter)
  for i in range(len(train)):
    record = train[i]
    by_question[streams.as_text(record["question"])][
        streams.training_answer(record["answers"])] += 1
  held_out = read(config.eval.split)
  scores = {m: [] for m in METRICS}
  for i in range(min(count, len(held_out))):
    record = held_out[i]
    answers = [streams.as_text(a) for a in record["answers"]]
    guess = by_question[streams.as_text(record["question"])].most_common(1)[0][0]
    scores["accuracy"].append(vqa_accuracy(guess, answers))
    scores["exact_match"].append(exact_match(guess, streams.training_answer(answers)))
  return {m: float(np.mean(v)) for m, v in scores.items()}


def table(per_seed: dict[int, dict], prior: dict) -> tuple[dict, str]:
  """Mean and range over seeds per arm and metric, and the markdown table."""
  summary, lines = {}, ["| arm | " + " | ".join(f"{m} (mean, min–max over seeds)"
                                                for m in METRICS) + " |",
                        "| --- |" + " ---: |" * len(METRICS)]
  for arm in ARMS:
    summary[arm] = {}
    cells = []
    for m in METRICS:
      values = [per_seed[s][arm][m] for s in per_seed]
      summary[arm][m] = {"mean": float(np.mean(values)), "min": min(values),
                         "max": max(values)}
      cells.append(f"{np.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})")
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  lines.append("| question prior (image unseen) | " + " | ".join(
      f"{prior[m]:.3f}" for m in METRICS) + " |")
  summary["question_prior"] = prior
  gain = [per_seed[s]["finetuned"]["accuracy"] - per_seed[s]["scratch"]["accuracy"]
          for s in per_seed]
  summary["finetuned_minus_scratch_accuracy"] = {"mean": float(np.mean(gain)),
                                                  "min": min(gain), "max": max(gain)}
  return summary, "\n".join(lines) + "\n"


def answers_figure(out: str, seed: int, path: str) -> None:
  """The first SHOWN held-out scenes with their question, the annotators' answer and each
  arm's greedy answer."""
  # pylint: disable=import-outside-toplevel
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from mmpretrain.data import streams
  from mmpretrain.train.evaluate import restore_params
  from mmpretrain.train.vqa_eval import VqaEval
  replies = {}
  for arm in ARMS:
    config = config_lib.load_config(CONFIG, "vqa")
    tok, run, params, _ = restore_params(config, f"{out}/{arm}_s{seed}")
    evaluation = VqaEval(run, tok)
    replies[arm] = evaluation.answers(params, "minigrid_vqa")[:SHOWN]
  questions = evaluation.sets["minigrid_vqa"]
  frames = questions.frames
  figure, axes = plt.subplots(1, SHOWN, figsize=(2.4 * SHOWN, 3.4))
  for i, axis in enumerate(axes):
    axis.imshow(frames[i], interpolation="nearest")     # the 32×32 RGB the model reads
    axis.set_axis_off()
    truth = streams.training_answer(questions.answers[i])
    axis.set_title(f"{questions.texts[i]}\ntruth: {truth}\nfine-tuned: "
                   f"{replies['finetuned'][i]}\nscratch: {replies['scratch'][i]}", fontsize=7)
  figure.tight_layout()
  storage.save_figure(path, figure)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--out", default="runs/vqa_mini")
  args = parser.parse_args()
  out = os.path.abspath(args.out)
  mmpretrain("prepare", f"--config={CONFIG}:general")
  mmpretrain("prepare", f"--config={CONFIG}:vqa")
  seeds = [int(s) for s in args.seeds.split(",")]
  per_seed = {seed: run_seed(out, seed) for seed in seeds}
  questions = config_lib.load_config(CONFIG, "vqa").eval.vqa_questions
  summary, markdown = table(per_seed, question_prior(questions))
  storage.write_json(f"{out}/results.json", {"per_seed": per_seed, "summary": summary})
  storage.write_text(f"{out}/results.md", markdown)
  answers_figure(out, seeds[0], f"{out}/answers.png")
  print(markdown + json.dumps(summary["finetuned_minus_scratch_accuracy"]))


if __name__ == "__main__":
  main()
