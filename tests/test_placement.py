"""Data parallelism: global batches from process-local rows; sharded step == one device."""
import jax
import numpy as np
import pytest

from mmpretrain.data.pipeline import make_batches
from mmpretrain.train import placement
from mmpretrain.train.step import Trainer


def test_global_batch_holds_the_local_rows_split_over_devices(config, tokenizer):
  mesh = placement.data_parallel_mesh(config.data.batch_size)
  local = next(make_batches(config, tokenizer))
  local = {k: v for k, v in local.items() if not k.startswith("skipped_")}
  batch = placement.global_batch(local, mesh)
  for key, value in local.items():
    np.testing.assert_array_equal(np.asarray(batch[key]), value, err_msg=key)
    assert len(batch[key].sharding.device_set) == jax.device_count() == 8
    assert batch[key].addressable_shards[0].data.shape[0] == config.data.batch_size // 8


def test_batch_that_does_not_split_over_devices_is_refused():
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    placement.data_parallel_mesh(12)


def test_data_parallel_step_equals_single_device_step(config, tokenizer):
  batch = next(make_batches(config, tokenizer))
  batch = {k: v for k, v in batch.items() if not k.startswith("skipped_")}
  mesh = placement.data_parallel_mesh(config.data.batch_size)
  results = []
  for trainer, step_batch in [(Trainer(config, tokenizer.byte_lengths()), batch),
                              (Trainer(config, tokenizer.byte_lengths(), mesh),
                               placement.global_batch(batch, mesh))]:
    state, metrics = trainer.step(trainer.init_state(0), step_batch)
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (params_1, metrics_1), (params_8, metrics_8) = results
  for key in ("loss", "text_loss", "flow_loss", "grad_norm"):
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_8, params_1)
