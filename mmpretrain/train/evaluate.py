"""Held-out evaluation, periodic in training (`config.eval.every_steps`) and from a
checkpoint (`mmpretrain eval`).

Losses: per stream of the mixture, fixed validation batches — text cross-entropy and bits
per byte, flow MSE — with fixed diffusion noise, so successive evaluations compare. Text
sets (`config.eval.text_sets`): datasets evaluated but never trained on (a held-out shard
of the pretraining corpus, an out-of-distribution corpus), by perplexity and bits per byte.
What the model does: the evaluations `config.eval.generative` names (GENERATIVE_EVALS),
each where the config trains what it judges:
- `caption_accuracy` (understanding): greedy captions of held-out MNIST digits that name
  the digit;
- `generation` (alignment): a frozen classifier (encoders/judge.py) scores images drawn
  for class captions, against images drawn without a caption;
- `world_model`: rollouts of held-out MiniGrid episodes (generate/world_model.py);
- `vqa`: answers to held-out questions of the vqa stream's datasets (train/vqa_eval.py);
- `fid` and `clip_score`: the standard scores of images drawn for the generation prompts
  (train/image_scores.py).
Each builds its jitted samplers once, so periodic evaluation compiles them once.
"""
import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmpretrain import image_files, sharding, storage
from mmpretrain.data import pipeline
from mmpretrain.data.images import image_batches
from mmpretrain.data.sources import DIGIT_WORDS
from mmpretrain.encoders.judge import load_classifier
from mmpretrain.generate import sample, world_model
from mmpretrain.run import Run
from mmpretrain.train import objective
from mmpretrain.train.image_scores import ClipScoreEval, FidEval
from mmpretrain.train.vqa_eval import VqaEval
from mmpretrain.train.checkpoint import RunCheckpoints
from mmpretrain.train.step import RunLoss


def eval_batch_size(config) -> int:
  """Rows of a held-out batch: config.eval.batch_size, else the training batch's."""
  return config.eval.batch_size or config.data.batch_size


def with_eval_batch(config):
  """A copy of `config` whose data.batch_size is the held-out batch's (eval_batch_size):
  how the data pipeline and the compiles of the evaluation programs read it."""
  held_out = config.copy_and_resolve_references()
  with held_out.unlocked():
    held_out.data.batch_size = eval_batch_size(config)
  return held_out


def stream_batches(config, tok, spec, stream: str, rows=None) -> list[dict]:
  """The first `config.eval.batches` validation batches of one stream (same every call),
  of eval_batch_size rows (`rows`: the ones this process loads)."""
  single = with_eval_batch(config)
  with single.unlocked():
    single.data.mixture = {stream: 1.0}
  batches = pipeline.make_batches(single, tok, spec, split=config.eval.split, rows=rows)
  return [next(batches) for _ in range(config.eval.batches)]


def text_set_config(config, name: str):
  """A copy of `config` whose text stream reads dataset `name` alone; its tokenizer stays
  the run's (whose path is keyed by the datasets the run trains on)."""
  text_set = config.copy_and_resolve_references()
  with text_set.unlocked():
    text_set.data.tokenizer.path = pipeline.tokenizer_path(config)
    text_set.data.mixture = {"text": 1.0}
    text_set.data.mixture_unit = "documents"
    text_set.data.streams.text.datasets = {name: 1.0}
  return text_set


class HeldOut:
  """Fixed held-out batches of every stream in the mixture and of every text set, and their
  losses for `params`.

  On a mesh each process loads the rows its devices hold and the rows are split over the
  batch axes, as in training.
  """

  def __init__(self, loss: RunLoss, tok):
    config, mesh = loss.config, loss.run.mesh
    self.loss, self.loss_config = loss, config.loss
    rows, to_device = None, lambda batch: batch
    if mesh is not None:
      size, rules = eval_batch_size(config), config.mesh.rules
      sharding.check_batch_splits(size, mesh, rules, "eval.batch_size")
      rows = sharding.process_rows(size, mesh, rules)
      to_device = lambda batch: sharding.global_batch(batch, mesh, rules, size)
    spec = loss.run.data_spec
    self.batches = {stream: [to_device(b) for b in
                             stream_batches(config, tok, spec, stream, rows)]
                    for stream, weight in sorted(config.data.mixture.items()) if weight > 0}
    self.text_sets = {name: [to_device(b) for b in stream_batches(
        text_set_config(config, name), tok, spec, "text", rows)]
                      for name in config.eval.get("text_sets", ())}

  def _metrics(self, params, batches) -> dict:
    sums = None
    for batch in batches:
      batch_sums = self.loss.eval_sums(params, batch)
      sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return jax.device_get(objective.summarize(sums, self.loss_config))

  def __call__(self, params) -> dict[str, float]:
    """{'<stream>/text_loss', '<stream>/text_bits_per_byte', '<stream>/flow_loss'} for the
    modalities each stream trains, and {'text_sets/<name>/perplexity', …/bits_per_byte,
    …/text_loss} for each text set."""
    results = {}
    for name, batches in self.text_sets.items():
      metrics = self._metrics(params, batches)
      text_loss = float(metrics["text_loss"])
      results |= {f"text_sets/{name}/text_loss": text_loss,
                  f"text_sets/{name}/perplexity": float(np.exp(text_loss)),
                  f"text_sets/{name}/bits_per_byte": float(metrics["text_bits_per_byte"])}
    for stream, batches in self.batches.items():
      metrics = self._metrics(params, batches)
      if metrics["text_tokens"] > 0:
        results[f"{stream}/text_loss"] = float(metrics["text_loss"])
        results[f"{stream}/text_bits_per_byte"] = float(metrics["text_bits_per_byte"])
      if metrics["visual_tokens"] > 0:
        results[f"{stream}/flow_loss"] = float(metrics["flow_loss"])
    return results


def names_digit(caption: str, label: int) -> bool:
  """Whether a generated caption names the digit `label` (as a whole word)."""
  return DIGIT_WORDS[label] in re.findall(r"[a-z]+", caption.lower())


class CaptionAccuracy:
  """Share of held-out MNIST digits whose greedy caption (image -> text, KV-cached) names
  their class: the understanding eval."""

  def __init__(self, run, tok):
    config, self.tok = run.config, tok
    batch = next(image_batches(config, tok, {"mnist_captions": 1.0}, split=config.eval.split,
                               batch_size=config.eval.caption_images, caption_len=1, seed=0,
                               repeat=False))
    self.labels = batch["label"]
    self.prompt = sample.understanding_prompt(run, tok, batch["images"])
    self.generate = sample.make_generator(run, config.eval.caption_tokens)

  def __call__(self, params) -> tuple[dict, dict]:
    generated = jax.device_get(self.generate(params, self.prompt, jax.random.key(0)))
    hits = [names_digit(sample.decode_generated(self.tok, ids), int(label))
            for ids, label in zip(generated, self.labels)]
    return {"mnist/caption_accuracy": float(np.mean(hits))}, {}


def classified_accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
  return float(np.mean(predicted == requested))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) between the Gaussians fitted to two
  feature sets [N, D] (float64). tr((Σ_a Σ_b)^½) is the sum of the square roots of the
  eigenvalues of Σ_a^½ Σ_b Σ_a^½, which is symmetric, so no general matrix square root
  (and no complex round-off) is needed."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  values, vectors = np.linalg.eigh(cov_a)
  root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
  return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b)
               - 2.0 * cross)


class GenerationAccuracy:
  """Images drawn for config.eval.generation_prompts (the i-th asks for class i), scored
  by the frozen classifier at config.eval.classifier, against the same number drawn from
  an empty caption (what the classifier sees by chance); and the Fréchet distance between
  the drawn images and config.eval.frechet_real_images held-out real ones in the
  classifier's feature space (it depends on the number drawn: compare runs at one size)."""

  def __init__(self, run, tok):
    config = run.config
    self.classifier, meta = load_classifier(config.eval.classifier)
    prompts = list(config.eval.generation_prompts)
    if len(prompts) > meta["num_classes"]:
      raise ValueError(f"{len(prompts)} eval.generation_prompts but the classifier knows "
                       f"{meta['num_classes']} classes")
    shape = (config.data.image_size, config.data.image_size, config.data.image_channels)
    if (meta["image_size"], meta["image_size"], meta["channels"]) != shape:
      raise ValueError(f"the classifier at {config.eval.classifier} judges {meta['image_size']}"
                       f"² images of {meta['channels']} channels, this model draws {shape}: "
                       "train one with this config's data settings")
    self.real_accuracy = meta["held_out_accuracy"]
    self.per_prompt = config.eval.generation_images_per_prompt
    self.requested = np.repeat(np.arange(len(prompts)), self.per_prompt)
    self.captions = [prompts[k] for k in self.requested]
    self.draw = sample.make_image_sampler(run, tok)
    self.seed = config.seed
    self.features = jax.jit(lambda images: self.classifier.features(images))
    real = next(image_batches(config, tok, {config.classifier.dataset: 1.0},
                              split=config.eval.split, batch_size=config.eval.frechet_real_images,
                              caption_len=1, seed=config.seed, repeat=False))["images"]
    self.real_features = np.asarray(self.features(jnp.asarray(real)))

  def __call__(self, params) -> tuple[dict, dict]:
    rng = jax.random.key(self.seed)
    conditional = np.asarray(self.draw(params, self.captions, rng))
    unconditional = np.asarray(self.draw(params, [""] * len(self.captions), rng))
    predict = lambda images: np.asarray(jnp.argmax(self.classifier(jnp.asarray(images)), -1))
    grid = sample.image_grid(conditional, columns=self.per_prompt)
    drawn_features = np.asarray(self.features(jnp.asarray(conditional)))
    return {"generation/accuracy": classified_accuracy(predict(conditional), self.requested),
            "generation/unconditional_accuracy": classified_accuracy(predict(unconditional),
                                                                     self.requested),
            "generation/classifier_real_accuracy": self.real_accuracy,
            "generation/frechet_distance": frechet_distance(drawn_features,
                                                            self.real_features)}, {
                "generation": np.asarray(grid)}


class WorldModelEval:
  """Action-conditioned rollouts of held-out MiniGrid episodes from their first context
  frames with the true actions, against copying the last context frame, at
  config.eval.world_model_horizons."""

  def __init__(self, run, tok):
    config = run.config
    self.context = config.data.streams.action_video.context_frames
    self.horizons = tuple(config.eval.world_model_horizons)
    self.frames, actions, self.missions = world_model.held_out_episodes(
        config, tok, config.eval.world_model_episodes, self.context + max(self.horizons))
    self.actions = [a[self.context - 1:] for a in actions]
    self.rollout = world_model.Rollout(run, tok, self.context)
    self.seed = config.seed

  def __call__(self, params) -> tuple[dict, dict]:
    c, horizon = self.context, max(self.horizons)
    predicted = self.rollout(params, self.frames[:, :c], self.actions, self.missions,
                             jax.random.key(self.seed))
    target = self.frames[:, c:]
    copy_last = np.repeat(self.frames[:, c - 1:c], horizon, axis=1)
    model = world_model.horizon_metrics(predicted, target, self.horizons)
    baseline = world_model.horizon_metrics(copy_last, target, self.horizons)
    strip = world_model.rollout_strip(self.frames[0], predicted[0], c)
    return {**{f"world_model/{k}": v for k, v in model.items()},
            **{f"world_model/copy_last_frame/{k}": v for k, v in baseline.items()}}, {
                "world_model_rollout": np.concatenate(list(strip), axis=1)}


def _trains(config, stream: str) -> bool:
  return config.data.mixture.get(stream, 0) > 0


@dataclasses.dataclass(frozen=True)
class GenerativeEval:
  build: Callable        # (run, tok) -> evaluation(params) -> (scalars, images)
  applies: Callable      # config -> whether the config trains what it judges


# What `config.eval.generative` may name; each runs where its config trains what it judges.
GENERATIVE_EVALS = {
    "caption_accuracy": GenerativeEval(CaptionAccuracy, lambda c: (
        _trains(c, "image_text") and c.eval.caption_images > 0
        and c.data.streams.image_text.datasets.get("mnist_captions", 0) > 0)),
    "generation": GenerativeEval(GenerationAccuracy, lambda c: (
        _trains(c, "image_text") and bool(c.eval.classifier))),
    "world_model": GenerativeEval(WorldModelEval, lambda c: (
        _trains(c, "action_video") and c.eval.world_model_episodes > 0)),
    "vqa": GenerativeEval(VqaEval, lambda c: (
        _trains(c, "vqa") and c.eval.get("vqa_questions", 0) > 0)),
    "fid": GenerativeEval(FidEval, lambda c: (
        _trains(c, "image_text") and bool(c.eval.get("fid_inception"))
        and bool(c.eval.get("fid_reference")))),
    "clip_score": GenerativeEval(ClipScoreEval, lambda c: (
        _trains(c, "image_text") and bool(c.eval.get("clip_siglip")))),
}


def generative_evals(run, tok) -> list:
  """The evaluations `config.eval.generative` names that apply to what the run trains."""
  config = run.config
  unknown = sorted(set(config.eval.generative) - set(GENERATIVE_EVALS))
  if unknown:
    raise ValueError(f"config.eval.generative names {unknown}; the evaluations are "
                     f"{sorted(GENERATIVE_EVALS)}")
  return [GENERATIVE_EVALS[name].build(run, tok) for name in config.eval.generative
          if GENERATIVE_EVALS[name].applies(config)]


class Evaluator:
  """Held-out losses and the generative evals: __call__(params) -> (scalars, images uint8
  [H, W, C] by name)."""

  def __init__(self, loss: RunLoss, tok):
    self.held_out = HeldOut(loss, tok)
    self.generative = generative_evals(loss.run, tok)

  def __call__(self, params) -> tuple[dict, dict]:
    scalars, images = self.held_out(params), {}
    for evaluation in self.generative:
      more_scalars, more_images = evaluation(params)
      scalars.update(more_scalars)
      images.update(more_images)
    return scalars, images


def restore_params(config, workdir: str, step: int | None = None, mesh=None):
  """(tokenizer, run, params, step) of a run's checkpoint (default: the newest); only the
  parameters are read (no optimizer is built, no optimizer state loaded), each process
  its shards of them on `mesh` (None: jax's first device)."""
  tok = pipeline.load_tokenizer(config)
  run = Run(config, mesh)
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  step = checkpoints.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}: train first")
  params = checkpoints.restore_params(step, run.abstract_params())
  checkpoints.close()
  return tok, run, params, step


def evaluate_checkpoint(config, workdir: str, step: int | None = None, mesh=None) -> dict:
  """Every evaluation of a checkpoint's parameters (default: the newest) on `mesh`
  (default: the config's over every device of the job), each process its share of every
  batch; process 0 writes <workdir>/eval/step_<N>.json, its images beside it as PNGs."""
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  tok, run, params, step = restore_params(config, workdir, step, mesh)
  scalars, images = Evaluator(RunLoss(run, tok.byte_lengths()), tok)(params)
  result = {"step": step, "split": config.eval.split, "batches_per_stream": config.eval.batches,
            "batch_size": eval_batch_size(config), "num_devices": mesh.size,
            "mesh_shape": dict(mesh.shape), **scalars}
  directory = storage.join(workdir, "eval")
  path = storage.join(directory, f"step_{step}.json")
  if jax.process_index() == 0:
    storage.makedirs(directory)
    for name, image in images.items():
      storage.save_image(storage.join(directory, f"step_{step}_{name}.png"),
                         image_files.to_pil(image))
    storage.write_json(path, result)
  return {**result, "path": path}
