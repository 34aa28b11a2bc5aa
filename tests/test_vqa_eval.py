"""The `vqa` evaluation: greedy answers to held-out questions, through prompts of different
lengths right-aligned in one cache (each equal to recomputing its row alone), scored by
VQAv2 accuracy and exact match."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from fixtures.tiny_vqa import QUESTIONS, TinyVqa
from test_decode import assert_greedy_by_recomputing
from mmpretrain.data import streams
from mmpretrain.generate import sample
from mmpretrain.run import Run
from mmpretrain.train import evaluate
from mmpretrain.train.step import Trainer
from mmpretrain.train.vqa_eval import VqaEval

@pytest.fixture(scope="module")
def vqa_config(data_dir, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tiny_vqa"))
  TinyVqa(data_dir=root, file_format="array_record").download_and_prepare()
  c = tiny_config(data_dir)
  with c.unlocked():
    c.data.datasets.tiny_vqa = {**c.data.datasets.minigrid_vqa.to_dict(),
                                "tfds_name": "tiny_vqa", "data_dir": root}
  c.data.streams.vqa.datasets = {"tiny_vqa": 1.0}
  c.data.mixture = {"text": 0.5, "image_text": 0.0, "vqa": 0.5}
  c.eval.generative, c.eval.vqa_questions, c.eval.vqa_answer_tokens = ("vqa",), 3, 3
  return c


def test_greedy_answers_through_one_cache_equal_recomputing_each_row(vqa_config, tokenizer):
  trainer = Trainer(Run(vqa_config), tokenizer.byte_lengths())
  params, run = trainer.init_state(0).params, trainer.run
  frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 1), dtype=np.uint8)
  questions = [tokenizer.encode(q) for q, _ in QUESTIONS]
  assert len({len(q) for q in questions}) == 3               # three prompt lengths
  prompt = sample.understanding_prompt(run, tokenizer, frames, questions)
  generated = np.asarray(sample.make_generator(run, 3)(params, prompt, jax.random.key(0)))
  for row in range(3):
    alone = sample.understanding_prompt(run, tokenizer, frames[row:row + 1],
                                        questions[row:row + 1])
    assert alone["tokens"].shape[1] == int((prompt["segment_ids"][row] > 0).sum())
    assert_greedy_by_recomputing(run, params, alone, generated[row])


class Answering(VqaEval):
  """The evaluation with its answers given by question: a stand-in for the model."""
  given: dict

  def answers(self, params, name):
    return [self.given[text] for text in self.sets[name].texts]


@pytest.mark.parametrize("replies, accuracy, exact", [
    (["2", "yes", "blue"], 1.0, 1.0),
    # 2 of 10 said 3: 8 of the 10 sets of 9 hold both (2/3), 2 hold one (1/3).
    (["Three", "yes.", "green"], ((8 * 2 / 3 + 2 / 3) / 10 + 1 + 1) / 3, 1 / 3),
    (["four", "no", "red"], 0.0, 0.0),
])
def test_scores_follow_the_vqa_rules(vqa_config, tokenizer, replies, accuracy, exact):
  run = Run(vqa_config)
  evaluation = Answering(run, tokenizer)
  evaluation.given = {question: reply for (question, _), reply in zip(QUESTIONS, replies)}
  scalars, _ = evaluation(None)
  assert scalars == {"vqa/tiny_vqa/accuracy": pytest.approx(accuracy),
                     "vqa/tiny_vqa/exact_match": pytest.approx(exact)}


def test_the_evaluation_runs_where_the_vqa_stream_is_trained(vqa_config, tokenizer):
  run = Run(vqa_config)
  params = Trainer(run, tokenizer.byte_lengths()).init_state(0).params
  (evaluation,) = evaluate.generative_evals(run, tokenizer)
  scalars, _ = evaluation(params)
  assert set(scalars) == {"vqa/tiny_vqa/accuracy", "vqa/tiny_vqa/exact_match"}
  assert all(0.0 <= v <= 1.0 for v in scalars.values())
  vqa_config.data.mixture = {"text": 1.0, "image_text": 0.0, "vqa": 0.0}
  assert evaluate.generative_evals(Run(vqa_config), tokenizer) == []
  assert streams.training_answer(QUESTIONS[0][1]) == "2"
