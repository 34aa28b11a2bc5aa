"""Text sets: datasets evaluated by perplexity and bits per byte, never trained on."""
import numpy as np
import pytest

from mmpretrain import config as config_lib
from mmpretrain.config_rules import ConfigError
from mmpretrain.data import pipeline
from mmpretrain.data.prepare import NotReady, check_prepared
from mmpretrain.run import Run
from mmpretrain.train import evaluate
from mmpretrain.train.step import Trainer


def with_text_set(config, name: str, tfds_name: str, text_field: str):
  with config.unlocked():
    config.data.datasets[name] = {**config.data.datasets.shakespeare_plays.to_dict(),
                                  "tfds_name": tfds_name, "fields": {"text": text_field}}
    config.eval.text_sets = (name,)
  return config


def test_a_text_set_scores_as_the_trained_stream_would(config, tokenizer):
  """The plays under a second name are not trained on by that name, so they may be a text
  set: their perplexity is exp of the text stream's held-out loss on the same batches, and
  their bits per byte equal the stream's."""
  config.eval.batches = 2
  with config.unlocked():
    config.data.mixture = {"text": 1.0, "image_text": 0.0, "video": 0.0, "action_video": 0.0}
  plays = with_text_set(config, "plays_again", "shakespeare_plays", "text")
  config_lib.validate(plays)
  trainer = Trainer(Run(plays), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  results = evaluate.HeldOut(trainer, tokenizer)(params)
  assert results["text_sets/plays_again/text_loss"] == pytest.approx(
      results["text/text_loss"], rel=1e-6)
  assert results["text_sets/plays_again/bits_per_byte"] == pytest.approx(
      results["text/text_bits_per_byte"], rel=1e-6)
  assert results["text_sets/plays_again/perplexity"] == pytest.approx(
      np.exp(results["text/text_loss"]), rel=1e-6)


def test_a_text_set_of_other_text_keeps_the_runs_tokenizer(data_dir):
  """MNIST captions read as text: another corpus, scored with the tokenizer of the datasets
  the run trains on (a text set changes neither that tokenizer's path nor the batches of
  the trained streams), and `prepare --check` looks for the set's eval split."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  plain = tiny_config(data_dir)
  with plain.unlocked():
    plain.data.tokenizer.path = ""
  captions = with_text_set(tiny_config(data_dir), "captions_as_text", "mnist_captions",
                           "caption")
  with captions.unlocked():
    captions.data.tokenizer.path = ""
  assert pipeline.tokenizer_path(captions) == pipeline.tokenizer_path(plain)
  held_out = evaluate.text_set_config(captions, "captions_as_text")
  assert held_out.data.tokenizer.path == pipeline.tokenizer_path(plain)
  assert pipeline.datasets_in_use(held_out) == ["captions_as_text"]
  with captions.unlocked():
    captions.data.datasets.captions_as_text.eval_split = "no_such_split"
  with pytest.raises(NotReady, match="no_such_split"):
    check_prepared(captions)


@pytest.mark.parametrize("name, fields, problem", [
    ("nowhere", None, "unknown dataset 'nowhere'"),
    ("digits", {"image": "image", "caption": "caption"}, "has no `text` field"),
    ("shakespeare_plays", None, "is trained on"),
])
def test_bad_text_sets_are_refused_by_name(config, name, fields, problem):
  if fields is not None:
    with config.unlocked():
      config.data.datasets[name] = {**config.data.datasets.mnist_captions.to_dict(),
                                    "fields": fields}
  config.eval.text_sets = (name,)
  with pytest.raises(ConfigError, match=problem):
    config_lib.validate(config)
