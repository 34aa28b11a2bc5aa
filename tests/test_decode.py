"""KV-cached decoding: a packed row run chunk by chunk — one text token at a time, each
visual block whole — gives the logits and visual predictions of running it at once."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmpretrain.generate import sample
from mmpretrain.data.pipeline import make_batches
from mmpretrain.model.masks import attention_mask, cached_attention_mask
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.tokenizers import visual
from mmpretrain.train import objective
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec


def chunks_of(block_ids: np.ndarray) -> list[tuple[int, int]]:
  """[start, stop) chunks of one row: each visual block whole, every other slot alone."""
  chunks, start = [], 0
  while start < len(block_ids):
    stop = start + 1
    if block_ids[start] > 0:
      while stop < len(block_ids) and block_ids[stop] == block_ids[start]:
        stop += 1
    chunks.append((start, stop))
    start = stop
  return chunks


@pytest.mark.parametrize("scan_layers, flow_head_width, frame_positions, mot",
                         [(True, 0, False, False), (False, 0, False, False),
                          (True, 48, True, False), (True, 0, False, True)])
def test_chunked_decoding_with_a_kv_cache_equals_the_full_forward(config, tokenizer,
                                                                 scan_layers, flow_head_width,
                                                                 frame_positions, mot):
  config.model.scan_layers = scan_layers
  config.model.mot = mot
  config.model.flow_head.width = flow_head_width
  config.model.frame_positions = frame_positions
  config.data.mixture = {"image_text": 1.0}
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  batch = jax.tree.map(jnp.asarray, next(make_batches(config, tokenizer, row_spec(config))))
  latents = visual.frame_latent_tokens(trainer.run.representation, trainer.run.frozen,
                                       batch["frames"], config.visual.patch_size)
  keys = jax.random.split(jax.random.key(0), batch["tokens"].shape[0])
  inputs, _ = objective.noised_inputs(batch, latents, keys, config.diffusion, 1.0)
  model = trainer.run.model(trainer.init_state(0).params)
  decode = jax.jit(lambda chunk, cache, index: model.decode(ModelInputs(**chunk), cache, index))
  for row in range(2):
    one = ModelInputs(**{k: v[row:row + 1] for k, v in vars(inputs).items()})
    want_logits, want_prediction, _ = model(one)
    cache = model.init_cache(1, one.tokens.shape[1])
    block_ids = np.asarray(one.block_ids[0])
    assert (block_ids > 0).any()                      # the row holds a visual block
    for start, stop in chunks_of(block_ids):
      chunk = {k: v[:, start:stop] for k, v in vars(one).items()}
      logits, prediction, cache = decode(chunk, cache, start)
      np.testing.assert_allclose(logits, want_logits[:, start:stop], atol=2e-4, rtol=1e-4)
      np.testing.assert_allclose(prediction, want_prediction[:, start:stop], atol=2e-4,
                                 rtol=1e-4)


def test_cached_mask_rows_equal_the_full_mask():
  """Chunks that keep visual blocks whole see exactly the full mask's written columns."""
  segment_ids = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0]])
  block_ids = np.array([[0, 0, 1, 1, 0, 0, 0, 2, 2, 2, 0, 0]])
  full = np.asarray(attention_mask(jnp.asarray(segment_ids), jnp.asarray(block_ids)))[0, 0]
  for start, stop in chunks_of(block_ids[0]):
    written = np.arange(12) < stop
    cached = np.asarray(cached_attention_mask(
        jnp.asarray(segment_ids[:, start:stop]), jnp.asarray(block_ids[:, start:stop]),
        jnp.asarray(np.where(written, segment_ids, 0)),
        jnp.asarray(np.where(written, block_ids, 0)), start))[0, 0]
    real = segment_ids[0, start:stop] > 0              # padding queries may differ
    np.testing.assert_array_equal(cached[real][:, :stop], full[start:stop][real][:, :stop])
    assert not cached[real][:, stop:].any()            # nothing unwritten is seen


@pytest.mark.slow              # ~30 s; make test-slow
def test_greedy_generation_with_the_cache_equals_recomputing_every_step(config, tokenizer):
  """Two prompts of different lengths (left-padded into one batch) continue exactly as
  the model run on the whole growing sequence of each alone, one token at a time."""
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  prompts = [[tokenizer.bos_id] + tokenizer.encode("To be, or not to be"),
             [tokenizer.bos_id] + tokenizer.encode("My lord")]
  generated = np.asarray(sample.make_generator(trainer.run, 6)(
      params, sample.text_prompt(trainer.run, prompts), jax.random.key(0)))
  patch = sample.patch_dim(trainer.run.representation.latent_grid, config.visual.patch_size)
  for row, prompt in enumerate(prompts):
    ids = jnp.asarray([prompt])
    alone = sample.text_inputs(ids, jnp.arange(len(prompt))[None], jnp.ones_like(ids), patch)
    assert_greedy_by_recomputing(trainer.run, params, vars(alone), generated[row])


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda p: np.isfinite(np.asarray(sample.top_p_filter(logits, p)))[0].tolist()
  assert kept(0.4) == [True, False, False, False]
  assert kept(0.7) == [True, False, True, False]         # 0.5 + 0.3 reaches 0.7
  assert kept(0.85) == [True, False, True, True]
  assert kept(1.0) == [True, True, True, True]
  draws = [int(sample.next_token(logits, jax.random.key(i), 1.0, 0.4)[0]) for i in range(20)]
  assert set(draws) == {0}                                  # only the top token survives


def assert_greedy_by_recomputing(run, params, prompt: dict, generated) -> None:
  """Each generated token is the argmax of a full forward (no cache) over the one-row
  `prompt` and the tokens before it. The decoder is causal after the prompt, so one
  forward over the prompt and every generated token but the last gives each of those
  forwards' last logits at once, each at its own position."""
  patch = sample.patch_dim(run.representation.latent_grid, run.config.visual.patch_size)
  fed = jnp.asarray(generated[None, :-1])
  extra = sample.text_inputs(fed, prompt["positions"][:, -1:] + 1 + jnp.arange(fed.shape[1]),
                             jnp.ones(fed.shape, jnp.int32), patch)
  inputs = {k: jnp.concatenate([v, getattr(extra, k)], axis=1) for k, v in prompt.items()
            if v is not None}
  logits, _, _ = run.model(params)(ModelInputs(**inputs))
  last = prompt["tokens"].shape[1] - 1
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits[0, last:], -1)), generated)


def test_captioning_an_image_equals_recomputing_with_the_image_in_context(config, tokenizer):
  """Image → caption: the prompt <bos> <boi> [clean image] <eoi> runs into the cache with
  its block bidirectional, then greedy text; equal to the full forward each step."""
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  frames = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 1), dtype=np.uint8)
  prompt = sample.understanding_prompt(trainer.run, tokenizer, frames)
  generated = np.asarray(sample.make_generator(trainer.run, 4)(params, prompt, jax.random.key(0)))
  for row in range(2):
    assert_greedy_by_recomputing(trainer.run, params, {k: v[row:row + 1] for k, v in
                                                       prompt.items()}, generated[row])
