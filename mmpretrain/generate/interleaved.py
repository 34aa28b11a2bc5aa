"""Interleaved documents: the Transfusion procedure, text and images in one sequence.

The model writes text one token at a time into a KV cache; when it emits `<boi>`, an image
block is denoised in place against that cache (with CFG: a second cache row holds the
unconditional `<bos> <boi>`, what caption dropout trained), the clean image is written
into the cache, `<eoi>` is appended and text continues — until `<eos>` or the cache is
full. One document at a time; each token and each image is one jitted call.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mmpretrain import image_files, storage
from mmpretrain.batch import MODALITY_VISUAL
from mmpretrain.generate import sample
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.tokenizers.visual import patch_dim

COND, UNCOND = 0, 1      # cache rows


class InterleavedSampler:
  """generate(params, text, rng, start_image=False) -> the document after `text`: a list
  of str and uint8 images [H, W, C]. `start_image` appends `<boi>` to the prompt (draw the
  caption's image first). At most `max_length` slots (config.data.seq_len by default)."""

  def __init__(self, run, tok, max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, max_length: int | None = None):
    self.run, self.tok = run, tok
    self.max_new_tokens = max_new_tokens
    self.max_length = max_length or run.config.data.seq_len
    self.block_length = run.spec.tokens_per_frame
    self.patch = patch_dim(run.representation.latent_grid,
                           run.config.visual.patch_size)
    self.decode_frames = sample.make_frame_decoder(run)

    def text(params, cache, tokens, positions, index, rng):
      """Writes tokens [2, L] at slots index.. of both rows; draws the next token."""
      inputs = sample.text_inputs(tokens, positions, jnp.ones_like(tokens), self.patch)
      logits, _, cache = run.model(params).decode(inputs, cache, index)
      return sample.next_token(logits[COND, -1], rng, temperature, top_p), cache

    def image(params, cache, tokens, positions, index, block_id, rng):
      """tokens/positions [2, 2] end with <boi> at slot index + 1: the conditional row
      rewrites its own last two tokens, the unconditional row forgets its past and becomes
      <bos> <boi>. Then the block at index + 2.. is denoised with CFG and written clean."""
      params = sample.gathered_params(run, params)
      cache = cache.replace(segment_ids=cache.segment_ids.at[UNCOND].set(0))
      inputs = sample.text_inputs(tokens, positions, jnp.ones_like(tokens), self.patch)
      _, _, cache = run.model(params).decode(inputs, cache, index)
      length = self.block_length
      block = {"tokens": jnp.zeros((2, length), jnp.int32),
               "modality": jnp.full((2, length), MODALITY_VISUAL, jnp.int8),
               "segment_ids": jnp.ones((2, length), jnp.int32),
               "block_ids": jnp.full((2, length), block_id, jnp.int32),
               "positions": positions[:, -1:] + 1 + jnp.arange(length)}
      z1 = jax.random.normal(rng, (1, length, self.patch), jnp.float32)
      z0 = sample.denoise_block(run, params, cache, block, index + 2, z1, guided=True)
      clean = ModelInputs(**block, visual_latents=jnp.concatenate([z0, z0]),
                          timesteps=jnp.zeros((2, length), jnp.float32))
      _, _, cache = run.model(params).decode(clean, cache, index + 2)
      return z0[0], cache

    self._text = sample.replicated_jit(run, text)
    self._image = sample.replicated_jit(run, image)

  def __call__(self, params, text: str, rng, start_image: bool = False) -> list:
    tok = self.tok
    text_rng, image_rng = jax.random.split(rng)   # image k draws its noise from fold_in(., k)
    ids = [tok.bos_id] + tok.encode(text)
    if len(ids) + 1 > self.max_length:
      raise ValueError(f"a prompt of {len(ids)} tokens leaves no room in {self.max_length} "
                       "slots (data.seq_len)")
    cache = self.run.model(params).init_cache(2, self.max_length)
    prompt = jnp.asarray([ids, ids], jnp.int32)
    token, cache = self._text(params, cache, prompt, jnp.arange(len(ids))[None].repeat(2, 0),
                              0, jax.random.fold_in(text_rng, 0))
    token = tok.boi_id if start_image else int(token)
    # The conditional row's slots are its positions; the unconditional row's own count.
    index, uncond_position, previous = len(ids), len(ids), ids[-1]
    segments, words, images, generated = [], [], 0, 0
    while generated < self.max_new_tokens and token != tok.eos_id:
      if token == tok.boi_id:
        if index + 2 + self.block_length > self.max_length:
          break
        if words:
          segments.append(self._words(words, ids, images))
          words = []
        latents, cache = self._image(
            params, cache, jnp.asarray([[previous, tok.boi_id], [tok.bos_id, tok.boi_id]]),
            jnp.asarray([[index - 1, index], [0, 1]]), index - 1, images + 1,
            jax.random.fold_in(image_rng, images))
        segments.append(np.asarray(self.decode_frames(latents)))
        images += 1
        index += 1 + self.block_length
        uncond_position = 2 + self.block_length
        token, previous = tok.eoi_id, tok.eoi_id       # the sampler closes the image
        continue
      if index + 1 > self.max_length:
        break
      if token != tok.eoi_id:
        words.append(token)
        generated += 1
      next_token, cache = self._text(
          params, cache, jnp.asarray([[token], [token]]),
          jnp.asarray([[index], [uncond_position]]), index, jax.random.fold_in(text_rng, index))
      previous, token = token, int(next_token)
      index, uncond_position = index + 1, uncond_position + 1
    if words:
      segments.append(self._words(words, ids, images))
    return segments

  def _words(self, words, prompt_ids, images_so_far) -> str:
    """Generated words as text; before any image they continue the prompt's text."""
    return sample.decode_generated(self.tok, words,
                                   after=prompt_ids[1:] if images_so_far == 0 else ())


def write_document(segments: list, output: str, name: str) -> str:
  """Saves a document's images as <output>/<name>_image<k>.png; returns its text with
  `[image: path]` where each image stands."""
  parts, images = [], 0
  for segment in segments:
    if isinstance(segment, str):
      parts.append(segment)
      continue
    path = storage.join(output, f"{name}_image{images}.png")
    storage.save_image(path, image_files.to_pil(segment))
    parts.append(f" [image: {path}] ")
    images += 1
  return "".join(parts)
