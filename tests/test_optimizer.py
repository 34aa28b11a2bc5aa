"""Learning-rate schedules against their closed forms; weight decay on the real model's
parameters; one AdamW step against torch.optim.AdamW."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

import base
from mmpretrain.model import layers
from mmpretrain.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer
from mmpretrain.run import build_model


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


def small_model_config(variant: str):
  c = base.get_config("runlocal")
  c.model.vocab_size, c.model.d_model, c.model.mlp_dim, c.model.head_dim = 64, 32, 64, 16
  if variant == "modality_ffn":
    c.model.modality_ffn = True
  elif variant == "moe":
    c.model.moe.num_experts, c.model.moe.router = 4, "sigmoid"
    c.model.moe.shared_experts = "per_modality"
  elif variant == "unscanned":
    c.model.scan_layers = False
  return c


def model_state(config):
  return nnx.split(build_model(config, 0))[1]


def is_variable(x):
  return isinstance(x, nnx.Variable)


def named_variables(state) -> dict:
  return {jax.tree_util.keystr(p): v
          for p, v in jax.tree_util.tree_leaves_with_path(state, is_leaf=is_variable)}


def named_leaves(tree) -> dict:
  """Path -> array (a Variable's value), with the paths of named_variables."""
  return {k: v.get_value() if is_variable(v) else v for k, v in named_variables(tree).items()}


@pytest.mark.parametrize("variant", ["dense", "modality_ffn", "moe", "unscanned"])
def test_decay_mask_on_the_real_model_state(variant):
  """Matrices and embeddings decay; norm scales, biases and the router bias do not."""
  state = model_state(small_model_config(variant))
  variables = named_variables(state)
  mask = named_leaves(decay_mask(state))
  assert mask.keys() == variables.keys()
  for path in variables:
    assert mask[path] == should_decay(path), path
  assert any("embedding" in p for p, on in mask.items() if on)
  if variant == "moe":
    assert mask["['decoder']['runs'][0]['blocks']['ffn']['experts']['gate']"]
    assert not mask["['decoder']['runs'][0]['blocks']['ffn']['router']['bias']"]


def should_decay(path: str) -> bool:
  """The specification, by name: everything but norm scales, biases and the router bias."""
  return path.rsplit("'", 2)[-2] not in ("scale", "bias")


def torch_adamw_steps(params: dict, grads_per_step: list[dict], decayed: set, ocfg):
  """The reference: torch.optim.AdamW (decoupled decay, bias correction) with global-norm
  clipping, decay only on `decayed`, float64."""
  tensors = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
             for k, v in params.items()}
  groups = [{"params": [tensors[k] for k in tensors if k in decayed],
             "weight_decay": ocfg.weight_decay},
            {"params": [tensors[k] for k in tensors if k not in decayed], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=ocfg.learning_rate, betas=(ocfg.b1, ocfg.b2),
                          eps=ocfg.eps)
  for grads in grads_per_step:
    for k, t in tensors.items():
      t.grad = torch.tensor(np.asarray(grads[k], np.float64))
    torch.nn.utils.clip_grad_norm_(list(tensors.values()), ocfg.grad_clip_norm)
    opt.step()
  return {k: t.detach().numpy() for k, t in tensors.items()}


def test_adamw_steps_on_the_real_model_equal_torch_adamw():
  config = small_model_config("moe")
  o = config.optimizer
  o.schedule, o.warmup_steps, o.learning_rate, o.weight_decay = "constant", 0, 1e-2, 0.3
  o.grad_clip_norm = 1.0
  state = model_state(config)
  tx = make_optimizer(o, num_steps=10)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x, state)
  grads_per_step, opt_state = [], tx.init(params)
  for _ in range(3):   # bias correction differs from step to step; clipping is active
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    grads_per_step.append(named_leaves(grads))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  decayed = {p for p in named_leaves(state) if should_decay(p)}
  assert decayed < set(named_leaves(state))      # decayed and undecayed parameters both there
  expected = torch_adamw_steps(named_leaves(state), grads_per_step, decayed, o)
  for path, value in named_leaves(params).items():
    np.testing.assert_allclose(np.asarray(value), expected[path], rtol=2e-5, atol=2e-6,
                               err_msg=path)


def test_zero_clip_norm_means_no_clipping():
  """grad_clip_norm = 0 leaves the gradient as it is (optax would scale it to zero)."""
  o = small_model_config("dense").optimizer
  o.schedule, o.warmup_steps, o.weight_decay = "constant", 0, 0.0
  params = {"w": jnp.ones((3, 3))}
  grads = {"w": jnp.full((3, 3), 100.0)}
  updates = {}
  for clip in (0.0, 1.0):
    o.grad_clip_norm = clip
    tx = make_optimizer(o, num_steps=10)
    mu = tx.init(params)
    _, state = tx.update(grads, mu, params)
    updates[clip] = float(optax_first_moment(state)["w"][0, 0])
  assert updates[0.0] == pytest.approx((1 - o.b1) * 100.0)
  assert updates[1.0] == pytest.approx((1 - o.b1) * 100.0 / 300.0, rel=1e-5)


def optax_first_moment(chain_state):
  """AdamW's first moment inside chain(clip, adamw)'s state."""
  adam_state = chain_state[1][0]
  return adam_state.mu


def test_layer_axis_name_matches_the_scanned_layers():
  """The mask discounts the stacking axis by name: the model must use that name."""
  state = model_state(small_model_config("dense"))
  variables = named_variables(state)
  scale = variables["['decoder']['runs'][0]['blocks']['attn_norm']['scale']"]
  assert scale.get_metadata()["out_sharding"][0] == layers.LAYER_AXIS


def test_stage_optimizer_decays_kernels_not_biases():
  """The representation stages' AdamW: with zero gradients one step shrinks every kernel
  by lr·wd and leaves biases alone."""
  # pylint: disable=import-outside-toplevel
  from mmpretrain import sharding
  from mmpretrain.stages.loop import StageTrainer
  config = base.get_config()
  o = config.optimizer
  o.schedule, o.warmup_steps, o.learning_rate, o.weight_decay = "constant", 0, 0.1, 0.5
  config.train.num_steps, config.data.batch_size, config.mesh.data = 1, 1, 1
  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
  for layer in model.layers:
    layer.bias[...] = jnp.ones_like(layer.bias[...])
  before = jax.tree.map(np.asarray, nnx.state(model))
  zero_loss = lambda m, batch, rng: (0.0 * jnp.sum(m(batch["x"])), {})
  trainer = StageTrainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]), model,
                         zero_loss)
  state, _ = trainer.step(trainer.init_state(model), {"x": jnp.ones((1, 3))},
                          trainer.frozen(model))
  trainer.update_module(model, state)
  for i, layer in enumerate(model.layers):
    np.testing.assert_allclose(layer.kernel[...], before["layers"][i]["kernel"] * (1 - 0.05),
                               rtol=1e-6)
    np.testing.assert_array_equal(layer.bias[...], before["layers"][i]["bias"])
