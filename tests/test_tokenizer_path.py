"""The tokenizer `prepare` trains is named by the corpus it was trained on: another corpus
of the same vocabulary size trains its own instead of reading the first one's."""
import os

import pytest

import demo
from mmpretrain.data import prepare as prepare_lib
from mmpretrain.data.pipeline import load_tokenizer, tokenizer_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_at(relative: str, arg=None):
  from test_configs_ship import parse_config_flags  # pylint: disable=import-outside-toplevel
  path = os.path.join(ROOT, "configs", relative)
  return parse_config_flags(f"{path}:{arg}" if arg else path)


def test_another_corpus_of_the_same_size_gets_its_own_tokenizer():
  own = config_at("examples/own_tfds_dataset.py")     # demo's datasets and my_captions
  assert own.data.tokenizer.vocab_size == demo.get_config().data.tokenizer.vocab_size
  assert tokenizer_path(own) != tokenizer_path(demo.get_config())
  assert os.path.dirname(tokenizer_path(own)) == own.data.data_dir


def test_the_same_corpus_gets_the_same_tokenizer():
  assert tokenizer_path(demo.get_config()) == tokenizer_path(demo.get_config())
  reweighted = demo.get_config()
  reweighted.data.mixture = {"text": 0.5, "image_text": 0.5}
  assert tokenizer_path(reweighted) == tokenizer_path(demo.get_config())


@pytest.mark.parametrize("relative, arg", [
    ("stages/encoder_demo.py", None), ("stages/rae_demo.py", None),
    ("stages/classifier_demo.py", None), ("ablations/visual_rep.py", "pixels"),
    ("scaling/mini.py", None)])
def test_what_make_demo_runs_reads_the_tokenizer_it_prepared(relative, arg):
  """`make demo` and `make scaling-mini` prepare configs/demo.py only."""
  assert tokenizer_path(config_at(relative, arg)) == tokenizer_path(demo.get_config())


@pytest.mark.parametrize("change", ["version", "tfds_name", "vocab_size", "dataset"])
def test_what_the_tokenizer_is_trained_on_names_it(change):
  c = demo.get_config()
  if change == "vocab_size":
    c.data.tokenizer.vocab_size = 8192
  elif change == "dataset":
    c.data.streams.image_text.datasets.emoji_captions = 1.0
  else:
    c.data.datasets.mnist_captions[change] = "other"
  assert tokenizer_path(c) != tokenizer_path(demo.get_config())


def test_an_explicit_tokenizer_path_wins():
  c = demo.get_config()
  c.data.tokenizer.path = "/models/tok.model"
  assert tokenizer_path(c) == "/models/tok.model"


def test_prepare_trains_a_tokenizer_per_corpus_in_one_data_dir(data_dir, tmp_path, capsys):
  """Two corpora of the session's datasets, their tokenizers written side by side."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  plays, missions = tiny_config(str(tmp_path)), tiny_config(str(tmp_path))
  for c in (plays, missions):
    c.data.tokenizer.path = ""
    for spec in c.data.datasets.values():
      spec.data_dir = data_dir               # read the session's datasets, write to tmp_path
  plays.data.mixture = {"text": 1.0}
  missions.data.mixture = {"text": 1.0, "action_video": 1.0}
  missions.data.max_frames = 5
  paths = [prepare_lib.prepare_tokenizer(c) for c in (plays, missions)]
  assert paths[0] != paths[1] and all(os.path.exists(p) for p in paths)
  assert "trained tokenizer" in capsys.readouterr().out
  pieces = [load_tokenizer(c).encode("go to the red key") for c in (plays, missions)]
  assert pieces[0] != pieces[1]              # the missions' words are pieces of their own
  assert prepare_lib.prepare_tokenizer(plays) == paths[0]
  assert "tokenizer ready" in capsys.readouterr().out
