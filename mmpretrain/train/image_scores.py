"""The paper's standard image-generation scores as named evaluations (`config.eval.generative`):
`fid` and `clip_score`, on images drawn for config.eval.generation_prompts.

Both draw the prompts' images in batches of len(generation_prompts) × generation_images_per_
prompt rows (the size the `generation` evaluation compiles), each batch from the seed folded
with its index, so successive evaluations compare.
- `fid`: eval.fid_images images against the statistics at eval.fid_reference (a .npz that
  `mmpretrain fid --real=FOLDER --save_stats=FILE` writes), with pytorch-fid's Inception at
  eval.fid_inception; the same features and distance as `mmpretrain fid` (fid/).
- `clip_score`: each prompt's images against the prompt, with the SigLIP checkpoint at
  eval.clip_siglip (encoders/clip_score.py).
"""
import jax
import numpy as np

from mmpretrain.encoders.clip_score import ClipScorer, clip_score
from mmpretrain.fid.inception import load_inception
from mmpretrain.fid.score import FeatureExtractor
from mmpretrain.fid.statistics import frechet_distance, load_statistics, statistics
from mmpretrain.generate import sample


class PromptImages:
  """draw(params, count) -> (uint8 images [count, H, W, C], the prompt of each)."""

  def __init__(self, run, tok):
    config = run.config
    per_prompt = config.eval.generation_images_per_prompt
    self.captions = [p for p in config.eval.generation_prompts for _ in range(per_prompt)]
    self.sampler, self.seed = sample.make_image_sampler(run, tok), config.seed

  def draw(self, params, count: int) -> tuple[np.ndarray, list[str]]:
    batches = -(-count // len(self.captions))
    images = [self.sampler(params, self.captions,
                           jax.random.fold_in(jax.random.key(self.seed), b))
              for b in range(batches)]
    return np.concatenate(images)[:count], (self.captions * batches)[:count]


def rgb(images: np.ndarray) -> np.ndarray:
  return images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)


class FidEval:
  def __init__(self, run, tok):
    config = run.config
    self.reference = load_statistics(config.eval.fid_reference)
    self.extract = FeatureExtractor(load_inception(config.eval.fid_inception))
    self.images, self.count = PromptImages(run, tok), config.eval.fid_images

  def __call__(self, params) -> tuple[dict, dict]:
    drawn, _ = self.images.draw(params, self.count)
    mu, sigma = statistics(self.extract(list(rgb(drawn)), len(drawn)))
    return {"fid/fid": frechet_distance(*self.reference, mu, sigma)}, {}


class ClipScoreEval:
  def __init__(self, run, tok):
    config = run.config
    self.scorer = ClipScorer(config.eval.clip_siglip)
    self.images = PromptImages(run, tok)

  def __call__(self, params) -> tuple[dict, dict]:
    drawn, captions = self.images.draw(params, len(self.images.captions))
    return {"clip_score/clip_score": clip_score(self.scorer.cosines(drawn, captions))}, {}
