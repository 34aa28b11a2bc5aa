"""The `fid` and `clip_score` evaluations equal the standalone scores (`mmpretrain fid`,
`mmpretrain clip-score`, each checked against its reference implementation) on the images
the model draws for the generation prompts."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from mmpretrain import config as config_lib
from mmpretrain.encoders.clip_score import ClipScorer, clip_score
from mmpretrain.generate.sample import ImageSampler
from mmpretrain.run import Run
from mmpretrain.train import evaluate, image_scores
from mmpretrain.train.step import Trainer
from test_clip_score import write_checkpoint

PROMPTS = ("a handwritten digit three", "a handwritten digit seven")


def scored_config(data_dir, **scores):
  c = tiny_config(data_dir)
  c.eval.generation_prompts, c.eval.generation_images_per_prompt = PROMPTS, 2
  c.eval.generative = ("fid", "clip_score")
  c.eval.update(scores)
  return config_lib.validate(c)


def model(config, tokenizer):
  run = Run(config)
  return run, Trainer(run, tokenizer.byte_lengths()).init_state(0).params


def drawn(run, tokenizer, params, batches: int) -> np.ndarray:
  """What the evaluations draw: the prompts' batch, each from the seed folded with its index."""
  captions = [p for p in PROMPTS for _ in range(2)]
  sampler = ImageSampler(run, tokenizer)
  return np.concatenate([sampler(params, captions, jax.random.fold_in(
      jax.random.key(run.config.seed), b)) for b in range(batches)])


def test_each_score_runs_only_where_its_files_are_given(data_dir):
  assert evaluate.GENERATIVE_EVALS["clip_score"].applies(scored_config(data_dir, clip_siglip="d"))
  assert not evaluate.GENERATIVE_EVALS["clip_score"].applies(scored_config(data_dir))
  fid = evaluate.GENERATIVE_EVALS["fid"].applies
  assert fid(scored_config(data_dir, fid_inception="w.pth", fid_reference="s.npz"))
  assert not fid(scored_config(data_dir, fid_inception="w.pth"))


def test_clip_score_evaluation_equals_the_scorer_on_the_drawn_images(data_dir, tokenizer,
                                                                     tmp_path):
  write_checkpoint(tmp_path, text_sign=-1.0)
  config = scored_config(data_dir, clip_siglip=str(tmp_path))
  run, params = model(config, tokenizer)
  (evaluation,) = evaluate.generative_evals(run, tokenizer)
  scalars, images = evaluation(params)
  want = clip_score(ClipScorer(str(tmp_path)).cosines(
      drawn(run, tokenizer, params, 1), [p for p in PROMPTS for _ in range(2)]))
  assert images == {}
  assert scalars == {"clip_score/clip_score": pytest.approx(want, abs=1e-4)}
  assert want > 0


@pytest.mark.slow
def test_fid_evaluation_equals_mmpretrain_fid_on_the_drawn_images(data_dir, tokenizer,
                                                                   tmp_path):
  """Six images: two batches of the four prompts' images, the second cut short."""
  import torch  # pylint: disable=import-outside-toplevel
  from mmpretrain.fid import inception as fid_inception  # pylint: disable=import-outside-toplevel
  from mmpretrain.fid.score import compare  # pylint: disable=import-outside-toplevel
  from test_fid import grating_images, random_fid_inception, write_folder
  network, _ = random_fid_inception()
  weights = str(tmp_path / fid_inception.WEIGHTS_FILE)
  torch.save(network.state_dict(), weights)
  write_folder(tmp_path / "real", grating_images(0, 10.0))
  reference = str(tmp_path / "real.npz")
  compare(str(tmp_path / "real"), None, weights, save_stats=reference)
  config = scored_config(data_dir, fid_inception=weights, fid_reference=reference,
                         fid_images=6)
  run, params = model(config, tokenizer)
  scalars, _ = image_scores.FidEval(run, tokenizer)(params)
  fake = tmp_path / "fake"
  os.makedirs(fake)
  for i, image in enumerate(drawn(run, tokenizer, params, 2)[:6]):
    Image.fromarray(image[..., 0]).save(fake / f"{i}.png")
  want = compare(reference, str(fake), weights)
  assert want["fake_images"] == 6
  assert scalars == {"fid/fid": pytest.approx(want["fid"], rel=1e-4)}
