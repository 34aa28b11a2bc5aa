"""VQA answers scored as the official evaluation (GT-Vision-Lab/VQA, vqaEval.py) scores
them: each normalisation rule on worked examples, written out by hand from the official
code, and the accuracy's leave-one-annotator-out average against hand-computed values
and a brute force over the subsets of annotators."""
import itertools
import random

import pytest

from mmpretrain.vqa.accuracy import exact_match, reference_answers, vqa_accuracy
from mmpretrain.vqa.normalize import (CONTRACTIONS, normalize_answer, normalize_words,
                                      strip_punctuation)


@pytest.mark.parametrize("text, expected", [
    ("black-and-white", "black and white"),      # a mark between words becomes a space
    ("black - white", "black  white"),           # a mark beside a space is deleted
    ("red,blue", "red blue"),
    ("red, blue", "red blue"),
    ("1,000", "1000"),                           # a comma between digits deletes every mark
    ("big-dog, 1,2", "bigdog 12"),
    ("yes!", "yes "),
    ("(approx)", " approx "),
    ("don't", "don't"),                          # apostrophes stay for the contractions
    ("10:30", "10:30"),                          # colons are not among the marks
])
def test_punctuation(text, expected):
  assert strip_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("yes.", "yes"),
    ("2.5", "2.5"),                              # a period before a digit stays
    ("3.", "3"),
    ("e.g.", "eg"),
    (".5 liters.", ".5 liters"),
    ("." * 40, "." * 8),                         # the official count of 32 removals
])
def test_periods(text, expected):
  assert strip_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Two", "2"), ("none", "0"), ("zero", "0"), ("ten", "10"), ("eleven", "eleven"),
    ("two dogs", "2 dogs"), ("one or three", "1 or 3"),
])
def test_number_words(text, expected):
  assert normalize_words(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("a dog", "dog"), ("The Cat", "cat"), ("an apple and the pear", "apple and pear"),
    ("another", "another"), ("the", ""),
])
def test_articles(text, expected):
  assert normalize_words(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("dont", "don't"), ("Dont know", "don't know"), ("cant", "can't"),
    ("oclock", "o'clock"), ("whats that", "what's that"), ("yall'll", "y'all'll"),
    ("Im", "im"),                                # a capitalised key never matches
    ("somebody'd", "somebodyd"),                 # the official table maps this backwards
])
def test_contractions(text, expected):
  assert normalize_words(text) == expected


def test_the_contractions_table_is_the_official_one():
  assert len(CONTRACTIONS) == 120
  assert {k: CONTRACTIONS[k] for k in ("aint", "youve", "ow's'at", "'ow'sat", "twas")} == {
      "aint": "ain't", "youve": "you've", "ow's'at": "'ow's'at", "'ow'sat": "'ow's'at",
      "twas": "'twas"}
  assert all("’" not in k + v for k, v in CONTRACTIONS.items())   # ASCII apostrophes


@pytest.mark.parametrize("text, expected", [
    ("\tThe Two dogs!\n", "2 dogs"), ("A black-and-white cat.", "black and white cat"),
    ("None", "0"), ("dont know", "don't know"), ("1,000 (approx)", "1000 approx"),
])
def test_a_prediction_is_normalised_by_every_rule_in_turn(text, expected):
  assert normalize_answer(text) == expected


def answers(matching: int, answer: str = "yes", other: str = "no") -> list[str]:
  return [answer] * matching + [other] * (10 - matching)


@pytest.mark.parametrize("matching, expected", [
    # (annotators who gave it × the credit the other 9 give it with them left out
    #  + the rest × the credit all matching give) / 10
    (0, 0.0),
    (1, (1 * 0 + 9 * (1 / 3)) / 10),                  # 0.3
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),            # 0.6
    (3, (3 * (2 / 3) + 7 * 1) / 10),                  # 0.9: min(3/3, 1) only without one
    (4, (4 * 1 + 6 * 1) / 10),                        # 1.0
    (10, 1.0),
])
def test_accuracy_averages_over_the_annotators_left_out(matching, expected):
  assert vqa_accuracy("yes", answers(matching)) == pytest.approx(expected, abs=1e-12)


def test_accuracy_named_values():
  assert vqa_accuracy("yes", answers(1)) == pytest.approx(0.3, abs=1e-12)
  assert vqa_accuracy("yes", answers(2)) == pytest.approx(0.6, abs=1e-12)
  assert vqa_accuracy("yes", answers(3)) == pytest.approx(0.9, abs=1e-12)


def test_accuracy_against_a_brute_force_over_the_subsets_of_annotators():
  rng = random.Random(0)
  for _ in range(200):
    n = rng.randint(2, 10)
    given = [rng.choice(["2", "yes", "no", "red"]) for _ in range(n)]
    prediction = rng.choice(["2", "yes", "no", "red", "blue"])
    subsets = list(itertools.combinations(range(n), n - 1))
    expected = sum(min(1.0, sum(given[i] == prediction for i in s) / 3)
                   for s in subsets) / len(subsets)
    assert vqa_accuracy(prediction, given) == pytest.approx(expected, abs=1e-12)


def test_the_prediction_is_normalised_before_it_is_matched():
  assert vqa_accuracy("Two.", answers(4, "2", "3")) == 1.0
  assert vqa_accuracy("The dog", answers(2, "dog", "cat")) == pytest.approx(0.6, abs=1e-12)
  assert vqa_accuracy("dont know", answers(4, "don't know", "no")) == 1.0


def test_the_annotators_answers_lose_punctuation_only_when_they_disagree():
  disagreeing = answers(4, "black-and-white", "gray")
  assert reference_answers(disagreeing)[:4] == ["black and white"] * 4
  assert vqa_accuracy("black and white", disagreeing) == 1.0
  agreeing = ["black-and-white"] * 10
  assert reference_answers(agreeing) == agreeing
  assert vqa_accuracy("black and white", agreeing) == 0.0
  # Nor are they lower-cased or given digits: released VQAv2 answers already are.
  assert vqa_accuracy("yes", answers(4, "Yes", "no")) == 0.0
  assert vqa_accuracy("two", answers(4, "two", "3")) == 0.0


def test_a_single_answer_is_refused_with_the_fix():
  with pytest.raises(ValueError, match="got 1 answer.*exact_match"):
    vqa_accuracy("yes", ["yes"])


def test_exact_match_after_normalisation():
  assert exact_match("The Two dogs!", "2 dogs") == 1.0
  assert exact_match("dont", "don't") == 1.0
  assert exact_match("1,000", "1000") == 1.0
  assert exact_match("cat", "cats") == 0.0
  assert exact_match("2.5", "25") == 0.0
