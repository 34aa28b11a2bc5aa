"""Generation throughput: images from captions, and text decoding with and without the cache.

  python benchmarks/generation.py --config=configs/demo.py [--batch=16 --new_tokens=64]

Random weights on raw pixels (the cost does not depend on the weights; the representation's
decoder is timed by benchmarks/encoder.py). In one process, medians of jitted,
block-until-ready calls:
- images: `batch` captions drawn with CFG (2·batch rows) at config.diffusion.sample_steps
  Euler steps and with Heun; `overhead_over_n_forwards` = one Euler sample ÷ (N × one
  uncached forward pass of the same 2·batch rows, caption + image): below 1 when the
  cache saves more (the prefix runs once, each step only the image's tokens) than the
  sampler's own work costs.
- text: `batch` prompts of `prompt_tokens` continued by `new_tokens`, with the KV cache
  (sample.make_generator) and without (each token re-runs the whole sequence so far in a
  fixed buffer): tokens/s of both and their ratio. (That both decode the same tokens is
  tests/test_decode.py's job, in float32: random bf16 logits are near ties.)
"""
import argparse
import copy
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from encoder import median_seconds
from mmpretrain.generate import sample
from mmpretrain.config import load_config, validate
from mmpretrain.hostalloc import relaunch_with_jemalloc
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import patch_dim
import smoke  # pylint: disable=wrong-import-order


class CaptionTokens:
  """The tokenizer surface caption_documents needs, without a prepared data dir: every
  caption is `caption_tokens` ids (special ids at the top of the vocabulary)."""

  def __init__(self, vocab_size: int, caption_tokens: int):
    self.bos_id, self.eos_id, self.boi_id, self.eoi_id = range(vocab_size - 4, vocab_size)
    self.caption = list(range(1, caption_tokens + 1))

  def encode(self, text: str) -> list[int]:
    return self.caption if text else []


def image_figures(run, params, batch: int, caption_tokens: int, steps: int,
                  warmup: int) -> dict:
  config, spec = run.config, run.spec
  tok = CaptionTokens(config.model.vocab_size, caption_tokens)
  documents = sample.caption_documents(tok, ["a caption"] * batch, spec)
  prompt = sample.block_prompt(documents, spec)
  dim = patch_dim(run.representation.latent_grid, config.visual.patch_size)
  no_frames = jnp.zeros((2 * batch, 1, dim), jnp.float32)
  rng = jax.random.key(0)
  figures = {}
  for name in ("euler", "heun"):
    config.diffusion.sampler = name
    draw = sample.make_block_sampler(run, guided=True)
    figures[f"{name}_sample_s"] = median_seconds(
        lambda draw=draw: draw(params, prompt, no_frames, rng), steps, warmup)
  config.diffusion.sampler = "euler"

  rows = sample.document_rows(documents, spec)
  used = int((rows["segment_ids"] > 0).sum(1).max())          # caption + image + <eoi><eos>
  inputs = {**{k: jnp.asarray(rows[k][:, :used]) for k in sample.ID_FIELDS},
            "visual_latents": jnp.zeros((2 * batch, used, dim)),
            "timesteps": jnp.where(jnp.asarray(rows["visual_loss_mask"][:, :used]), 0.5, 0.0)}
  forward = jax.jit(lambda p, x: run.model(p)(ModelInputs(**x))[1])
  forward_s = median_seconds(lambda: forward(params, inputs), steps, warmup)
  n = config.diffusion.sample_steps
  return {"images": batch, "sample_steps": n, "rows_per_forward": 2 * batch,
          "tokens_per_row": used, "forward_s": forward_s,
          "euler_images_per_s": batch / figures["euler_sample_s"],
          "heun_images_per_s": batch / figures["heun_sample_s"],
          "overhead_over_n_forwards": figures["euler_sample_s"] / (n * forward_s)}


def uncached_generator(run, new_tokens: int):
  """Greedy decoding that re-runs the whole sequence for every token (the reference the
  cache is measured against): a fixed [B, P + N] buffer, causal, read at the last token."""
  dim = patch_dim(run.representation.latent_grid, run.config.visual.patch_size)

  def generate(params, prompt):
    batch, length = prompt.shape
    tokens = jnp.concatenate([prompt, jnp.zeros((batch, new_tokens), prompt.dtype)], axis=1)
    positions = jnp.broadcast_to(jnp.arange(length + new_tokens), tokens.shape)
    segments = jnp.ones_like(tokens)

    def step(tokens, i):
      logits, _, _ = run.model(params)(sample.text_inputs(tokens, positions, segments, dim))
      token = jnp.argmax(logits[:, length - 1 + i], axis=-1)
      return jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], length + i, 1), token

    _, generated = jax.lax.scan(step, tokens, jnp.arange(new_tokens))
    return generated.T

  return jax.jit(generate)


def text_figures(run, params, batch: int, prompt_tokens: int, new_tokens: int, steps: int,
                 warmup: int) -> dict:
  prompts = np.random.default_rng(0).integers(1, 100, size=(batch, prompt_tokens)).tolist()
  cached = sample.make_generator(run, new_tokens)
  prompt = sample.text_prompt(run, prompts)
  cached_s = median_seconds(lambda: cached(params, prompt, jax.random.key(0)), steps, warmup)
  uncached = uncached_generator(run, new_tokens)
  uncached_s = median_seconds(lambda: uncached(params, jnp.asarray(prompts, jnp.int32)),
                              steps, warmup)
  return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
          "cached_tokens_per_s": batch * new_tokens / cached_s,
          "uncached_tokens_per_s": batch * new_tokens / uncached_s,
          "cache_speedup": uncached_s / cached_s}


def main():
  relaunch_with_jemalloc()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, default=16, help="captions / prompts per call")
  parser.add_argument("--caption_tokens", type=int, default=6)
  parser.add_argument("--prompt_tokens", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3, help="timed calls (median)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  smoke.add_flag(parser)
  args = parser.parse_args()
  config = copy.deepcopy(validate(load_config(args.config)))
  if args.smoke:
    config = smoke.tiny(config)
    args.batch, args.new_tokens, args.steps, args.warmup = 2, 4, 1, 0
  config.visual.representation, config.visual.checkpoint = "pixels", ""
  config.visual.patch_size = 4
  run = Run(config)
  params = run.init_params(0)
  print(json.dumps({
      "config": args.config, "backend": jax.default_backend(), "dtype": config.model.dtype,
      "batch": args.batch,
      **image_figures(run, params, args.batch, args.caption_tokens, args.steps,
                      args.warmup),
      **text_figures(run, params, args.batch, args.prompt_tokens, args.new_tokens,
                     args.steps, args.warmup)}))


if __name__ == "__main__":
  main()
