"""Learning-rate schedules against their closed forms; weight decay only on kernels."""
import math

import jax.numpy as jnp
import ml_collections
import pytest

from mmpretrain.train.optimizer import decay_mask, learning_rate_schedule


def ocfg(schedule):
  return ml_collections.ConfigDict({"learning_rate": 1.0, "schedule": schedule,
                                    "warmup_steps": 10, "decay_fraction": 0.2,
                                    "min_lr_ratio": 0.1})


def test_cosine():
  lr = learning_rate_schedule(ocfg("cosine"), 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  for step in (10, 35, 60, 110):
    progress = (step - 10) / 100
    assert float(lr(step)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)),
                                            abs=1e-5)


def test_warmup_stable_decay():
  lr = learning_rate_schedule(ocfg("wsd"), 100)    # decay over the last 20 steps
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == float(lr(50)) == float(lr(80)) == pytest.approx(1.0)
  assert float(lr(90)) == pytest.approx(0.55)
  assert float(lr(100)) == pytest.approx(0.1)


def test_decay_mask_skips_norms_and_biases():
  params = {"attn": {"kernel": jnp.ones((2, 2))}, "norm": {"scale": jnp.ones(2)},
            "embed": {"embedding": jnp.ones((3, 2))}, "proj": {"bias": jnp.ones(2)}}
  mask = decay_mask(params)
  assert mask == {"attn": {"kernel": True}, "norm": {"scale": False},
                  "embed": {"embedding": True}, "proj": {"bias": False}}
