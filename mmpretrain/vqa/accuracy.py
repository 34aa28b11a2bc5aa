"""VQAv2 accuracy as the official evaluation (vqaEval.py) computes it, and exact match
after normalisation for answers with a single reference."""
from typing import Sequence

from mmpretrain.vqa.normalize import normalize_answer, strip_punctuation

HUMANS_FOR_FULL_CREDIT = 3       # an answer given by this many annotators counts in full


def reference_answers(answers: Sequence[str]) -> list[str]:
  """The annotators' answers as vqaEval compares them: as given when they all agree,
  else with their punctuation stripped; never lower-cased nor given digits, since the
  released VQAv2 answers already are normalised."""
  if len(set(answers)) > 1:
    return [strip_punctuation(a) for a in answers]
  return list(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """min(#matching annotators / 3, 1) against each set of all annotators but one,
  averaged over the sets (with VQAv2's 10 answers, the 10 sets of 9)."""
  if len(answers) < 2:
    raise ValueError(f"vqa_accuracy scores an answer against the other annotators', got "
                     f"{len(answers)} answer(s): give every annotator's answer, or use "
                     "exact_match for a single reference")
  predicted = normalize_answer(prediction)
  matching = [a == predicted for a in reference_answers(answers)]
  total = sum(matching)
  # Left out by position: the official code drops the left-out annotator's answer record,
  # which its answer_id makes unique even when another annotator gave the same answer.
  per_set = [min(1.0, (total - left_out) / HUMANS_FOR_FULL_CREDIT) for left_out in matching]
  return sum(per_set) / len(per_set)


def exact_match(prediction: str, reference: str) -> float:
  """1.0 when the two answers are equal once both are normalised as vqaEval normalises
  a prediction, else 0.0."""
  return float(normalize_answer(prediction) == normalize_answer(reference))
