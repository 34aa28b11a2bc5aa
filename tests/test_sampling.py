"""Transfusion sampling through the KV cache: a visual block denoised in place against the
cached prefix equals denoising it by recomputing the whole sequence every step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmpretrain import diffusion, sharding
from mmpretrain.generate import interleaved, sample
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.train import aot
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec

CAPTIONS = ["a handwritten digit three", "seven"]     # prompts of two lengths


def recomputed_sample(trainer, params, rows, z1, guided: bool):
  """Reference Euler/CFG sampler: each step runs the full packed rows (no cache) and reads
  the prediction at the generated block's slots."""
  cfg = trainer.config.diffusion
  model = trainer.run.model(params)
  block = jnp.asarray(rows["visual_loss_mask"])
  slots = np.stack([np.flatnonzero(m) for m in rows["visual_loss_mask"]])
  n = len(slots) // 2 if guided else len(slots)
  z = z1
  times = np.asarray(diffusion.sampling_times(cfg.sample_steps, trainer.run.time_shift))
  for t, t_next in zip(times[:-1], times[1:]):
    both = jnp.concatenate([z, z]) if guided else z
    latents = jnp.zeros((*block.shape, z.shape[-1])).at[np.arange(len(slots))[:, None],
                                                          slots].set(both)
    timesteps = jnp.where(block, t, 0.0)
    _, prediction, _ = model(ModelInputs(**{k: jnp.asarray(rows[k]) for k in sample.ID_FIELDS},
                                         visual_latents=latents, timesteps=timesteps))
    v = diffusion.velocity(prediction, latents, timesteps, cfg.prediction, cfg.min_t)
    v = jnp.take_along_axis(v, jnp.asarray(slots)[..., None], axis=1)
    if guided:
      v = diffusion.classifier_free_guidance(v[:n], v[n:], cfg.cfg_scale)
    z = z + (t_next - t) * v
  return z


@pytest.mark.parametrize("guided", [True, False])
def test_denoising_a_block_against_the_cache_equals_recomputing_the_sequence(
    config, tokenizer, guided):
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  spec = row_spec(config)
  documents = sample.caption_documents(tokenizer, CAPTIONS, spec)   # cond + uncond twins
  if not guided:
    documents = documents[:len(CAPTIONS)]
  prompt = sample.block_prompt(documents, spec)
  assert len(set(np.argmax(prompt.prefix["segment_ids"] > 0, axis=1))) > 1   # right-aligned
  context = trainer.run.latent_tokens(prompt.frames)
  rng = jax.random.key(3)
  got = sample.make_block_sampler(trainer.run, guided)(params, prompt, context, rng)
  z1 = jax.random.normal(rng, got.shape, jnp.float32)
  want = recomputed_sample(trainer, params, sample.document_rows(documents, spec), z1, guided)
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_guidance_scale_one_is_the_conditional_prediction(config, tokenizer):
  config.diffusion.cfg_scale = 1.0
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  spec = row_spec(config)
  documents = sample.caption_documents(tokenizer, CAPTIONS, spec)
  guided = sample.block_prompt(documents, spec)
  conditional = sample.block_prompt(documents[:len(CAPTIONS)], spec)
  rng = jax.random.key(0)
  context = lambda prompt: trainer.run.latent_tokens(prompt.frames)
  np.testing.assert_allclose(
      sample.make_block_sampler(trainer.run, True)(params, guided, context(guided), rng),
      sample.make_block_sampler(trainer.run, False)(params, conditional, context(conditional), rng),
      atol=1e-5)


def test_a_prompt_that_does_not_fit_a_row_names_the_settings_to_change(config, tokenizer):
  spec = row_spec(config)
  with pytest.raises(ValueError, match="data.seq_len"):
    sample.block_prompt(sample.caption_documents(tokenizer, ["seven " * 200], spec), spec)


def test_an_interleaved_document_draws_the_captions_image_like_the_image_sampler(
    config, tokenizer):
  """Caption, then <boi>: the image denoised against the document's cache (CFG against a
  cache row rewritten to <bos> <boi>) is the image sampler's, and text follows it."""
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  rng = jax.random.key(5)
  document = interleaved.InterleavedSampler(trainer.run, tokenizer, max_new_tokens=3)(
      params, CAPTIONS[0], rng, start_image=True)
  want = sample.make_image_sampler(trainer.run, tokenizer)(
      params, CAPTIONS[:1], jax.random.fold_in(jax.random.split(rng)[1], 0))
  assert isinstance(document[0], np.ndarray)
  np.testing.assert_allclose(document[0].astype(int), np.asarray(want[0]).astype(int), atol=1)
  assert all(isinstance(s, str) for s in document[1:])    # untrained: text, no second <boi>


def test_an_interleaved_document_stops_when_the_row_is_full(config, tokenizer):
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  sampler = interleaved.InterleavedSampler(trainer.run, tokenizer, max_new_tokens=1000,
                                           max_length=20)
  params, rng = trainer.init_state(0).params, jax.random.key(0)
  # <boi> at slot 4 needs 16 image slots and <eoi>: 22 > 20, so the document ends there.
  assert sampler(params, "a digit", rng, start_image=True) == []
  text = sampler(params, "a digit", rng)                  # text alone runs to the row's end
  assert len(text) == 1 and len(tokenizer.encode(text[0])) <= 20 - 4


@pytest.mark.parametrize("prompt, continuation", [("ROMEO:", " and yet I may not deny you"),
                                                  ("To be, or not to be", " a man")])
def test_a_continuation_that_starts_a_new_word_keeps_its_space(tokenizer, prompt,
                                                                continuation):
  prompt_ids = tokenizer.encode(prompt)
  ids = tokenizer.encode(prompt + continuation)
  assert ids[:len(prompt_ids)] == prompt_ids      # the continuation's ids follow the prompt's
  new_ids = ids[len(prompt_ids):] + [tokenizer.eos_id, 7]
  # Decoded alone SentencePiece drops the leading space: the trap this guards against.
  assert not tokenizer.decode(new_ids[:-2]).startswith(" ")
  text = prompt + sample.decode_generated(tokenizer, new_ids, after=prompt_ids)
  assert text == prompt + continuation


def test_the_sampler_on_a_mesh_draws_what_one_device_draws_without_moving_weights_per_step(
    config, tokenizer):
  """On an fsdp mesh of 8 the image sampler gathers each weight once, before its loop: a
  denoising step compiled with the weights as the loop holds them has no all-gather (in
  training's shardings it gathers every layer's shards on each step), and the images
  equal the one-device sampler's."""
  config.mesh.update({"data": 1, "fsdp": 8, "expert": 1, "tensor": 1})
  config.data.batch_size = 16             # the compiled step's 8 conditional rows split 8 ways
  captions = ["one", "two", "three", "four"]                 # 8 guided rows, one per device
  step, _ = aot.compile_denoising_step(config, jax.devices())
  assert "all-gather" not in step.as_text()
  mesh = sharding.make_mesh(config.mesh)
  params = Trainer(Run(config, mesh), tokenizer.byte_lengths()).init_state(0).params
  rng = jax.random.key(3)
  on_mesh = sample.make_image_sampler(Run(config, mesh), tokenizer)(params, captions, rng)
  one_device = sample.make_image_sampler(Run(config), tokenizer)(
      jax.device_get(params), captions, rng)
  np.testing.assert_allclose(np.asarray(on_mesh).astype(int),
                             np.asarray(one_device).astype(int), atol=1)
