"""VQA as a named evaluation (`vqa` in config.eval.generative): greedy answers, through the
KV cache, to the first eval.vqa_questions questions of the eval split of every dataset the
vqa stream trains on, scored by VQAv2 accuracy (the official rules, vqa/) and by exact
match with the answer most annotators gave (the one the stream trains on)."""
import jax
import numpy as np

from mmpretrain.data import pipeline, streams
from mmpretrain.data.records import Unreadable
from mmpretrain.generate import sample
from mmpretrain.vqa.accuracy import exact_match, vqa_accuracy

NEEDED, _ = streams.STREAMS["vqa"]


class VqaSet:
  """One dataset's first `count` questions: the prompts and every annotator's answers."""

  def __init__(self, run, tok, name: str, count: int):
    config = run.config
    ctx = streams.StreamContext(config, tok, "vqa")
    records = pipeline.dataset_records(config, name, config.eval.split)
    fields = config.data.datasets[name].fields
    readable = (r for r in (records[i] for i in range(len(records)))
                if not isinstance(r, Unreadable))
    chosen = [pipeline.canonical(r, fields, NEEDED, name)
              for r, _ in zip(readable, range(count))]
    self.answers = [[streams.as_text(a) for a in r["answers"]] for r in chosen]
    self.texts = [streams.as_text(r["question"]) for r in chosen]
    self.questions = [ctx.encode(text) for text in self.texts]
    self.frames = np.stack([ctx.frame(r["image"]) for r in chosen])   # as the model reads them
    self.prompt = sample.understanding_prompt(run, tok, self.frames, self.questions)


class VqaEval:
  def __init__(self, run, tok):
    config, self.tok = run.config, tok
    self.sets = {name: VqaSet(run, tok, name, config.eval.vqa_questions)
                 for name, weight in sorted(config.data.streams.vqa.datasets.items())
                 if weight > 0}
    self.generate = sample.make_generator(run, config.eval.vqa_answer_tokens)

  def answers(self, params, name: str) -> list[str]:
    questions = self.sets[name]
    generated = jax.device_get(self.generate(params, questions.prompt, jax.random.key(0)))
    return [sample.decode_generated(self.tok, ids, after=question).strip()
            for ids, question in zip(generated, questions.questions)]

  def __call__(self, params) -> tuple[dict, dict]:
    scalars = {}
    for name, questions in self.sets.items():
      predicted = self.answers(params, name)
      scalars[f"vqa/{name}/accuracy"] = float(np.mean(
          [vqa_accuracy(p, a) for p, a in zip(predicted, questions.answers)]))
      scalars[f"vqa/{name}/exact_match"] = float(np.mean(
          [exact_match(p, streams.training_answer(a))
           for p, a in zip(predicted, questions.answers)]))
    return scalars, {}
