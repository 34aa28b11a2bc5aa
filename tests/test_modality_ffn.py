"""The grouped modality FFNs (tokens sorted by modality, grouped matmuls) against a float64
per-token reference, and sharded against unsharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import base
from mmpretrain import sharding
from mmpretrain.model import layers, modality_ffn

D, F, TOKENS = 16, 24, 64


def ffn_pair(dtype="float32"):
  cfg = base.get_config("runlocal").model
  cfg.update({"d_model": D, "mlp_dim": F, "dtype": dtype})
  return layers.SwiGLU(cfg, rngs=nnx.Rngs(0)), layers.SwiGLU(cfg, rngs=nnx.Rngs(1))


def kernels(ffn):
  return [np.asarray(getattr(ffn, name).kernel[...], np.float64)
          for name in ("gate", "up", "down")]


def reference(text, visual, x, is_visual):
  """Each token through its own modality's SwiGLU, one at a time, in float64."""
  out = []
  for token, visual_token in zip(np.asarray(x, np.float64), np.asarray(is_visual)):
    gate, up, down = kernels(visual if visual_token else text)
    g, u = token @ gate, token @ up
    out.append((g / (1 + np.exp(-g)) * u) @ down)
  return np.stack(out)


def loss(impl, cotangent):
  def of(text, visual, x, is_visual):
    return jnp.sum(modality_ffn.apply(text, visual, x, is_visual, impl) * cotangent)
  return nnx.grad(of, argnums=(0, 1, 2))


MASKS = {"mixed": np.random.default_rng(2).random(TOKENS) < 0.4,
         "all_text": np.zeros(TOKENS, bool), "all_visual": np.ones(TOKENS, bool)}


@pytest.mark.parametrize("mask", MASKS)
def test_grouped_equals_each_token_through_its_own_ffn(mask):
  text, visual = ffn_pair()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(TOKENS, D)), jnp.float32)
  is_visual = jnp.asarray(MASKS[mask])
  out = modality_ffn.apply(text, visual, x, is_visual, "grouped")
  np.testing.assert_allclose(out, reference(text, visual, x, is_visual), rtol=1e-5, atol=1e-5)

  # Gradients: x and both FFNs' weights, against the select form (autodiff of a per-token
  # where: the untaken FFN gets exactly zero from a token).
  cotangent = jnp.asarray(rng.normal(size=(TOKENS, D)), jnp.float32)
  grouped = loss("grouped", cotangent)(text, visual, x, is_visual)
  selected = loss("select", cotangent)(text, visual, x, is_visual)
  for got, want in zip(jax.tree.leaves(grouped), jax.tree.leaves(selected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grouped_over_an_fsdp_and_tensor_mesh_equals_one_device():
  """Tokens split 4 ways (each device sorts its own), weights gathered over fsdp and their
  hidden layer split over tensor: values and gradients equal the one-device form."""
  text, visual = ffn_pair()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(TOKENS, D)), jnp.float32)
  is_visual = jnp.asarray(MASKS["mixed"])
  cotangent = jnp.asarray(rng.normal(size=(TOKENS, D)), jnp.float32)
  want_out = modality_ffn.apply(text, visual, x, is_visual, "grouped")
  want_grads = loss("grouped", cotangent)(text, visual, x, is_visual)

  mesh_config = base.get_config("runlocal").mesh
  mesh_config.update({"data": 1, "fsdp": 4, "expert": 1, "tensor": 2})
  mesh = sharding.make_mesh(mesh_config, jax.devices()[:8])
  @nnx.jit
  def run(text, visual, x, is_visual):
    with sharding.activation_rules(mesh, mesh_config.rules):
      out = modality_ffn.apply(text, visual, x, is_visual, "grouped")
      return out, loss("grouped", cotangent)(text, visual, x, is_visual)
  out, grads = run(text, visual, x, is_visual)
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_auto_groups_on_tpu_and_selects_elsewhere():
  assert modality_ffn.resolve("auto", "tpu") == "grouped"
  assert modality_ffn.resolve("auto", "gpu") == "select"
  assert modality_ffn.resolve("auto", "cpu") == "select"
  with pytest.raises(ValueError, match="modality_ffn_impl"):
    modality_ffn.resolve("both")
