"""Representation evaluation: the linear probe on constructed data with known answers, and
eval-representation on the pixel representation of MNIST."""
import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from mmpretrain import pixels
from mmpretrain.stages.evaluation import evaluate_representation, linear_probe_accuracy
from mmpretrain.run import Run

PROBE = dict(steps=300, learning_rate=1e-2, weight_decay=1e-4)


def test_linear_probe_separates_separable_classes_and_not_random_labels():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 20)) * 4
  labels = rng.integers(0, 4, size=600)
  x = centers[labels] + rng.normal(size=(600, 20))
  assert linear_probe_accuracy(x[:400], labels[:400], x[400:], labels[400:], 4, **PROBE) > 0.95
  shuffled = rng.permutation(labels)
  assert linear_probe_accuracy(x[:400], shuffled[:400], x[400:], shuffled[400:], 4,
                               **PROBE) < 0.45


def test_psnr_of_known_errors():
  frames = np.full((1, 4, 4, 1), 100, np.uint8)
  off_by = frames + np.uint8(51)                     # error 51/127.5 = 0.4: mse 0.16
  got = pixels.signed_psnr(pixels.to_signed(off_by), pixels.to_signed(frames))[0]
  assert float(got) == pytest.approx(10 * np.log10(4 / 0.16), rel=1e-6)
  assert float(pixels.psnr(0.01, 1.0)) == pytest.approx(20.0)         # [0, 1]: 10·log10(1/0.01)
  beyond = pixels.to_signed(frames) + 3.0                             # clipped to 1 first
  assert float(pixels.signed_psnr(beyond, pixels.to_signed(frames))[0]) == pytest.approx(
      10 * np.log10(4 / (1 - (100 / 127.5 - 1)) ** 2), rel=1e-6)
  round_trip = pixels.to_uint8(pixels.to_signed(np.arange(256, dtype=np.uint8)))
  np.testing.assert_array_equal(np.asarray(round_trip), np.arange(256))


def test_pixels_reconstruct_exactly_and_probe_above_chance(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.eval_representation.probe_datasets = ("mnist_captions",)
  config.eval_representation.held_out_images = 200
  config.eval_representation.probe_train_images = 600
  result = evaluate_representation(config, str(tmp_path / "eval.json"))
  assert result["psnr_db"]["mnist_captions"] > 90                  # lossless (1e-10 floor)
  assert result["linear_probe_accuracy"]["mnist_captions"] > 0.6   # 10 classes, chance 0.1
  assert json.loads((tmp_path / "eval.json").read_text()) == result


def test_a_caption_names_a_digit_only_as_a_whole_word():
  from mmpretrain.train.evaluate import names_digit  # pylint: disable=import-outside-toplevel
  assert names_digit("a handwritten digit seven", 7)
  assert names_digit("Seven.", 7)
  assert not names_digit("a handwritten digit seventeen", 7)
  assert not names_digit("a handwritten digit one", 7)
  assert not names_digit("", 0)


def test_caption_accuracy_scores_the_generated_captions_against_the_labels(config, tokenizer):
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.data.sources import DIGIT_WORDS
  from mmpretrain.train.evaluate import CaptionAccuracy  # pylint: disable=C0415
  from mmpretrain.train.step import Trainer  # pylint: disable=import-outside-toplevel
  config.eval.caption_images, config.eval.caption_tokens = 8, 3
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  evaluation = CaptionAccuracy(trainer.run, tokenizer)
  params = trainer.init_state(0).params
  generated = np.asarray(evaluation.generate(params, evaluation.prompt, jax.random.key(0)))
  assert generated.shape == (8, 3)                     # the real generator ran, greedily
  # Captions that name the right digit for images 0, 2, 5 and a wrong one for the others.
  labels = [int(label) for label in evaluation.labels]
  right = {0, 2, 5}
  captions = [f"a digit {DIGIT_WORDS[label if i in right else (label + 1) % 10]}"
              for i, label in enumerate(labels)]
  evaluation.generate = lambda *_: [tokenizer.encode(c) for c in captions]
  scalars, _ = evaluation(params)
  assert scalars["mnist/caption_accuracy"] == 3 / 8


def classifier_config(data_dir: str):
  c = tiny_config(data_dir)
  c.data.batch_size = 64
  c.train.num_steps, c.train.log_every = 120, 40
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 2e-3, 10
  c.classifier.widths = (16, 32, 32)
  return c


@pytest.fixture(scope="module")
def classifier_dir(data_dir, tmp_path_factory):
  from mmpretrain.stages.classifier import train_classifier  # pylint: disable=import-outside-toplevel
  summary = train_classifier(classifier_config(data_dir), str(tmp_path_factory.mktemp("cls")))
  assert summary["held_out_accuracy"] > 0.8          # 10 classes: it learned real digits
  return summary["classifier"]


def test_generation_accuracy_scores_a_generator_by_the_classes_it_draws(
    data_dir, tokenizer, classifier_dir):
  """A stand-in generator that returns real held-out digits of the requested class scores
  near the classifier's own accuracy; one that ignores the caption scores near chance."""
  # pylint: disable=import-outside-toplevel
  from mmpretrain.data.images import image_batches
  from mmpretrain.data.sources import digit_caption
  from mmpretrain.train.evaluate import GenerationAccuracy
  config = tiny_config(data_dir)
  config.eval.classifier = classifier_dir
  config.eval.generation_images_per_prompt = 10
  real = next(image_batches(config, tokenizer, {"mnist_captions": 1.0}, split="validation",
                            batch_size=1000, caption_len=1, seed=0, repeat=False))
  by_class = {k: real["images"][real["label"] == k] for k in range(10)}
  captions = {digit_caption(k): k for k in range(10)}
  rng = np.random.default_rng(0)

  def faithful(params, asked, key):
    del params, key
    return np.stack([by_class[captions[c]][rng.integers(len(by_class[captions[c]]))]
                     if c else real["images"][rng.integers(len(real["images"]))] for c in asked])

  evaluation = GenerationAccuracy(Run(config), tokenizer)
  evaluation.draw = faithful
  scalars, images = evaluation(None)
  assert scalars["generation/accuracy"] >= 0.8
  assert scalars["generation/unconditional_accuracy"] <= 0.3
  assert scalars["generation/classifier_real_accuracy"] > 0.8
  # real held-out digits are close to the real set; uniform noise is far from it
  real_distance = scalars["generation/frechet_distance"]
  evaluation.draw = lambda params, asked, key: rng.integers(0, 256, (len(asked), 16, 16, 1),
                                                            dtype=np.uint8)
  noise_distance = evaluation(None)[0]["generation/frechet_distance"]
  assert noise_distance > 10 * real_distance
  assert images["generation"].shape[:2] == (10 * 16 * 2, 10 * 16 * 2)   # one row per class


def test_generation_accuracy_refuses_a_classifier_of_another_image_size(
    data_dir, tokenizer, classifier_dir):
  # pylint: disable=import-outside-toplevel
  from mmpretrain.train.evaluate import GenerationAccuracy
  config = tiny_config(data_dir)
  config.eval.classifier = classifier_dir
  config.data.image_size = 32
  with pytest.raises(ValueError, match="train one with this config"):
    GenerationAccuracy(Run(config), tokenizer)


def test_a_model_trained_on_one_digit_draws_that_digit(data_dir, tokenizer, classifier_dir,
                                                        tmp_path):
  """Overfit check of the whole train → sample path: trained only on captioned threes, the
  unified model's caption-conditioned samples are threes for the judge (≥ 90%)."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from fixtures.one_digit import DIGIT, OneDigitCaptions
  from mmpretrain.generate import sample
  from mmpretrain.data.sources import digit_caption
  from mmpretrain.encoders.judge import load_classifier
  from mmpretrain.train.evaluate import restore_params
  from mmpretrain.train.loop import train
  OneDigitCaptions(data_dir=str(tmp_path / "data"), file_format="array_record"
                   ).download_and_prepare()
  config = tiny_config(data_dir)
  config.data.datasets.threes = {
      "tfds_name": "one_digit_captions", "data_dir": str(tmp_path / "data"), "version": "",
      "train_split": "train", "eval_split": "train",
      "fields": {"image": "image", "caption": "caption"}}
  config.data.mixture = {"text": 0.0, "image_text": 1.0, "video": 0.0, "action_video": 0.0}
  config.data.streams.image_text.datasets = {"threes": 1.0}
  config.data.streams.image_text.generation_ratio = 1.0
  config.train.num_steps, config.checkpoint.every_steps = 150, 0
  config.diffusion.sample_steps = 25
  # The numel rule's shift for 16×16×1 frames is 0.25, which starves the high-noise steps
  # that decide the digit (docs/architecture.md, the objective).
  config.diffusion.time_shift = 2.0
  config.sample.images_per_caption = 1
  train(config, str(tmp_path / "run"))
  _, run, params, _ = restore_params(config, str(tmp_path / "run"))
  images = sample.make_image_sampler(run, tokenizer)(
      params, [digit_caption(DIGIT)] * 20, jax.random.key(0))
  classifier, _ = load_classifier(classifier_dir)
  predicted = np.asarray(np.argmax(classifier(jnp.asarray(images)), -1))
  assert np.mean(predicted == DIGIT) >= 0.9, predicted


def test_frechet_distance_matches_the_closed_form_for_gaussians():
  """Samples of two known Gaussians: the fitted-Gaussian formula (float64, scipy's general
  matrix square root as the reference) and the population value it converges to."""
  # pylint: disable=import-outside-toplevel
  from scipy import linalg
  from mmpretrain.train.evaluate import frechet_distance
  rng = np.random.default_rng(0)
  dim = 4
  mix_a, mix_b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
  cov_a, cov_b = mix_a @ mix_a.T + np.eye(dim), mix_b @ mix_b.T + 0.5 * np.eye(dim)
  mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
  a = rng.multivariate_normal(mean_a, cov_a, 20_000)
  b = rng.multivariate_normal(mean_b, cov_b, 20_000)
  fitted_a, fitted_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  reference = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(fitted_a + fitted_b)
               - 2 * np.trace(linalg.sqrtm(fitted_a @ fitted_b)).real)
  assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-9)
  population = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b)
                - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b)).real)
  assert frechet_distance(a, b) == pytest.approx(population, rel=0.05)
  assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_the_config_accepts_exactly_the_registered_evaluations(config):
  from mmpretrain import config_rules  # pylint: disable=import-outside-toplevel
  from mmpretrain.train import evaluate  # pylint: disable=import-outside-toplevel
  assert set(config_rules.GENERATIVE_EVALS) == set(evaluate.GENERATIVE_EVALS)
  config.eval.generative = ("caption_accuracy", "drawing")
  with pytest.raises(ValueError, match="drawing"):
    evaluate.generative_evals(Run(config), None)
