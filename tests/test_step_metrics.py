"""The loop's metric window (clu.metrics on device) against numpy sums and means."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmpretrain.batch import SKIP_FIELDS
from mmpretrain.train.metrics import StepMetrics


def step_metrics(rng, nonfinite):
  return {"loss": jnp.float32(rng.normal()), "grad_norm": jnp.float32(rng.uniform()),
          "tokens": jnp.int32(rng.integers(0, 1000)), "nonfinite": jnp.int32(nonfinite),
          **{f: jnp.int32(rng.integers(0, 3)) for f in SKIP_FIELDS}}


def test_counts_add_up_scalars_average_and_nonfinite_counts_the_whole_run():
  rng = np.random.default_rng(0)
  metrics = StepMetrics()
  windows = [[step_metrics(rng, n) for n in (0, 1, 0)], [step_metrics(rng, n) for n in (1, 1)]]
  for w, window in enumerate(windows):
    for m in window:
      metrics.add(m)
    read = metrics.read()
    for name in ("loss", "grad_norm"):
      assert read[name] == pytest.approx(np.mean([float(m[name]) for m in window]), rel=1e-6)
    for name in ("tokens", *SKIP_FIELDS):
      assert read[name] == sum(int(m[name]) for m in window)
      assert isinstance(read[name], int)
    assert read["nonfinite_updates_skipped"] == (1, 3)[w]
    assert "nonfinite" not in read
