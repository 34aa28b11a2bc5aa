"""Held-out evaluation, periodic in training (`config.eval.every_steps`) and from a
checkpoint (`mmpretrain eval`): per stream of the mixture, the losses of fixed validation
batches — text cross-entropy and bits per byte, flow MSE — with fixed diffusion noise, so
successive evaluations are comparable; from a checkpoint also MNIST captioning accuracy
(does the greedy caption of a held-out digit name it)."""
import json
import os
import re

import jax
import jax.numpy as jnp

from mmpretrain import sample
from mmpretrain.data import pipeline
from mmpretrain.data.images import image_batches
from mmpretrain.data.sources import DIGIT_WORDS
from mmpretrain.train import objective
from mmpretrain.train.checkpoint import RunCheckpoints
from mmpretrain.train.step import Trainer


def stream_batches(config, tok, stream: str, rows=None) -> list[dict]:
  """The first `config.eval.batches` validation batches of one stream (same every call)."""
  single = config.copy_and_resolve_references()
  with single.unlocked():
    single.data.mixture = {stream: 1.0}
  batches = pipeline.make_batches(single, tok, split=config.eval.split, rows=rows)
  return [next(batches) for _ in range(config.eval.batches)]


class HeldOut:
  """Fixed held-out batches of every stream in the mixture, and their losses for `params`.

  `to_device(batch)` places a host batch (this process's `rows`) for the trainer, e.g.
  sharding.global_batch on a mesh.
  """

  def __init__(self, config, tok, trainer, rows=None, to_device=None):
    self.trainer, self.loss_config = trainer, config.loss
    to_device = to_device or (lambda batch: batch)
    self.batches = {stream: [to_device(b) for b in stream_batches(config, tok, stream, rows)]
                    for stream, weight in sorted(config.data.mixture.items()) if weight > 0}

  def __call__(self, params) -> dict[str, float]:
    """{'<stream>/text_loss', '<stream>/text_bits_per_byte', '<stream>/flow_loss'} for the
    modalities each stream trains."""
    results = {}
    for stream, batches in self.batches.items():
      sums = None
      for batch in batches:
        batch_sums = self.trainer.eval_sums(params, batch)
        sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
      metrics = jax.device_get(objective.summarize(sums, self.loss_config))
      if metrics["text_tokens"] > 0:
        results[f"{stream}/text_loss"] = float(metrics["text_loss"])
        results[f"{stream}/text_bits_per_byte"] = float(metrics["text_bits_per_byte"])
      if metrics["visual_tokens"] > 0:
        results[f"{stream}/flow_loss"] = float(metrics["flow_loss"])
    return results


def names_digit(caption: str, label: int) -> bool:
  """Whether a generated caption names the digit `label` (as a whole word)."""
  return DIGIT_WORDS[label] in re.findall(r"[a-z]+", caption.lower())


def caption_accuracy(config, tok, trainer, params) -> float:
  """Share of held-out MNIST digits whose greedy caption (image -> text, KV-cached) names
  their class: the understanding eval."""
  batch = next(image_batches(config, tok, {"mnist_captions": 1.0}, split=config.eval.split,
                             batch_size=config.eval.caption_images, caption_len=1, seed=0,
                             repeat=False))
  prompt = sample.caption_prompt(trainer, tok, batch["images"], pipeline.row_spec(config))
  generate = sample.make_generator(trainer, config.eval.caption_tokens)
  generated = jax.device_get(generate(params, prompt, jax.random.key(0)))
  hits = []
  for ids, label in zip(generated, batch["label"]):
    ids = [int(i) for i in ids]
    ids = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
    hits.append(names_digit(tok.decode(ids), int(label)))
  return float(sum(hits) / len(hits))


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """Held-out losses of a checkpoint's parameters (default: the newest), written to
  <workdir>/eval/step_<N>.json."""
  tok = pipeline.load_tokenizer(config)
  trainer = Trainer(config, tok.byte_lengths())
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  step = checkpoints.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}: train first")
  params = checkpoints.restore(step, trainer.abstract_state()).params
  checkpoints.close()
  result = {"step": step, "split": config.eval.split, "batches_per_stream": config.eval.batches,
            **HeldOut(config, tok, trainer)(params)}
  if config.data.streams.image_text.datasets.get("mnist_captions", 0) > 0:
    result["mnist/caption_accuracy"] = caption_accuracy(config, tok, trainer, params)
  path = os.path.join(workdir, "eval", f"step_{step}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  return {**result, "path": path}
