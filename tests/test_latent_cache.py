"""Cached representation latents (visual.cached_latents): `prepare` encodes every frame
once; training on the cache equals training with the live encoder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import all_streams_config
from mmpretrain.batch import DEVICE_FIELDS
from mmpretrain.data import latent_cache
from mmpretrain.data.pipeline import make_batches
from mmpretrain.data.prepare import NotReady, check_prepared
from mmpretrain.run import Run
from mmpretrain.stages.latent_cache import build_latent_caches
from mmpretrain.train.step import Trainer

STEPS = 3


def cached(config, dtype: str):
  c = config.copy_and_resolve_references()
  c.visual.cached_latents, c.visual.latent_cache_dtype = True, dtype
  return c


def used_frames(batch, tokens_per_frame: int):
  """(row, frame) of every frame a row's slots use (the rest of `frames` is padding)."""
  slot = batch["frame_slot"]
  return [(row, f) for row in range(len(slot))
          for f in np.unique(slot[row][slot[row] >= 0] // tokens_per_frame)]


def batches_and_params(config, tokenizer):
  """(3 batches, state after 3 steps, the step metrics) of `config`."""
  run = Run(config)
  trainer = Trainer(run, tokenizer.byte_lengths())
  batches = make_batches(config, tokenizer, run.data_spec)
  state, seen, metrics = trainer.init_state(0), [], []
  for _ in range(STEPS):
    batch = {k: v for k, v in next(batches).items() if k in DEVICE_FIELDS}
    seen.append(batch)
    state, m = trainer.step(state, batch)
    metrics.append(jax.device_get(m))
  return run, seen, state, metrics


def assert_cached_training_equals_live(config, tokenizer, rtol: float, frame_atol=1e-6):
  """Same documents, the cache's frames equal the live encoder's latents, and training
  on float32 latents gives the live run's losses and parameters (to `rtol`)."""
  live_run, live_batches, live_state, live_metrics = batches_and_params(config, tokenizer)
  cache_config = cached(config, "float32")
  with pytest.raises(NotReady, match="cached_latents"):
    check_prepared(cache_config)
  build_latent_caches(cache_config)
  assert check_prepared(cache_config)
  run, batches, state, metrics = batches_and_params(cache_config, tokenizer)
  encode = jax.jit(live_run.representation.encode)
  for live, got in zip(live_batches, batches):
    for key in DEVICE_FIELDS:
      if key != "frames":
        np.testing.assert_array_equal(got[key], live[key], err_msg=key)
    assert got["frames"].dtype == np.float32
    assert got["frames"].shape[2:] == tuple(live_run.representation.latent_grid)
    assert live["frame_slot"].max() >= 0                    # the batch holds frames
    want = np.asarray(encode(live_run.frozen, jnp.asarray(live["frames"])))
    for row, f in used_frames(live, run.spec.tokens_per_frame):
      np.testing.assert_allclose(got["frames"][row, f], want[row, f], rtol=1e-6,
                                 atol=frame_atol)
  for a, b in zip(live_metrics, metrics):
    for key in ("loss", "text_loss", "flow_loss"):
      assert float(b[key]) == pytest.approx(float(a[key]), rel=rtol), key
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6),
               jax.device_get(live_state.params), jax.device_get(state.params))


def test_four_streams_train_on_cached_pixels_as_on_live_ones(data_dir, tokenizer):
  config = all_streams_config(data_dir)
  config.data.batch_size = 4
  assert_cached_training_equals_live(config, tokenizer, rtol=1e-5)


@pytest.mark.slow              # ~30 s; make test-slow
def test_a_bfloat16_cache_is_close_and_a_changed_representation_has_its_own(data_dir, tokenizer):
  config = all_streams_config(data_dir)
  config.data.batch_size = 4
  bf16 = cached(config, "bfloat16")
  build_latent_caches(bf16)
  run = Run(bf16)
  batch = next(make_batches(bf16, tokenizer, run.data_spec))
  assert str(batch["frames"].dtype) == "bfloat16"
  live = next(make_batches(config, tokenizer, Run(config).data_spec))
  want = np.asarray(Run(config).representation.encode({}, jnp.asarray(live["frames"])))
  for row, f in used_frames(live, run.spec.tokens_per_frame):
    np.testing.assert_allclose(batch["frames"][row, f].astype(np.float32), want[row, f],
                               atol=1e-2)
  other = bf16.copy_and_resolve_references()
  other.data.image_size = 32
  names = {latent_cache.cache_name(c, "mnist_captions")
           for c in (bf16, cached(config, "float32"), other)}
  assert len(names) == 3
