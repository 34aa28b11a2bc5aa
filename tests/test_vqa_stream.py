"""The VQA stream: `<bos> <boi>[image]<eoi> question answer <eos>` with only the answer and
<eos> trained (checked on a packed row against a hand-built one), the answer annotators
agree on, and the MiniGrid VQA scenes' answers against what their renders show."""
import grain
import numpy as np
import pytest

from mmpretrain.batch import RowSpec
from mmpretrain.data import sources, streams
from mmpretrain.data.packing import PackIterDataset
from mmpretrain.generate import world_model
from mmpretrain.image_files import png_bytes
from mmpretrain.tokenizers.text import special_ids


def test_only_the_answer_and_eos_are_trained_in_a_packed_row(config, tokenizer):
  record = {"image": png_bytes(np.full((16, 16, 1), 200, np.uint8)),
            "question": "how many keys are there?", "answers": ["two"] * 7 + ["three"] * 3}
  document = streams.vqa_document(streams.StreamContext(config, tokenizer, "vqa"), record,
                                  np.random.default_rng(0))
  frame_tokens = 4
  spec = RowSpec(seq_len=64, max_frames=1, tokens_per_frame=frame_tokens, frame_shape=(16, 16, 1))
  (row,) = list(PackIterDataset(grain.MapDataset.source([document]).to_iter_dataset(), spec))
  s = special_ids(tokenizer)
  question, answer = tokenizer.encode(record["question"]), tokenizer.encode("two")
  tokens = ([s["bos"], s["boi"]] + [0] * frame_tokens + [s["eoi"]] + question + answer
            + [s["eos"]])
  trained = [False] * (len(tokens) - len(answer) - 1) + [True] * (len(answer) + 1)
  n = len(tokens)
  np.testing.assert_array_equal(row["tokens"][:n], tokens)
  np.testing.assert_array_equal(row["text_loss_mask"][:n], trained)
  assert not row["text_loss_mask"][n:].any() and not row["visual_loss_mask"].any()


@pytest.mark.parametrize("answers, trained", [
    (["two", "three", "two"], "two"), (["red", "blue"], "red"), ([b"yes"], "yes")])
def test_the_trained_answer_is_the_one_most_annotators_gave(answers, trained):
  assert streams.training_answer(answers) == trained


def test_minigrid_vqa_answers_agree_with_each_other_and_with_the_render():
  scenes = list(sources.minigrid_vqa("validation", 200, questions_per_scene=10))
  assert len({q for _, q, _ in scenes}) == 10        # every kind of question was asked
  by_frame = {}
  for frame, question, answers in scenes:
    assert answers == [answers[0]] * sources.VQA_ANNOTATORS
    by_frame.setdefault(frame.tobytes(), (frame, {}))[1][question] = answers[0]
  cell = frame.shape[0] // sources.MINIGRID_CELLS
  templates = world_model.agent_templates(cell)
  for frame, answered in by_frame.values():
    for kind in sources.VQA_OBJECTS:
      count = sources.VQA_COUNTS.index(answered[f"how many {sources.VQA_PLURALS[kind]} are "
                                               "there?"])
      assert answered[f"is there a {kind}?"] == ("yes" if count else "no")
      assert (f"what color is the {kind}?" in answered) == (count == 1)
    row, column = world_model.agent_cell(frame)
    patch = frame[row * cell:(row + 1) * cell, column * cell:(column + 1) * cell]
    heading = ((patch[None, 1:, 1:].astype(float) - templates[:, 1:, 1:]) ** 2).sum(
        (1, 2, 3)).argmin()
    assert answered["which way does the agent face?"] == sources.MOVES[heading]
