"""The repository's samplers driven by the *exact* denoiser of a known distribution.

Data x ~ Σ_k π_k N(μ_k, Σ_k) (3 components in 3 dims). On z_t = (1 − t)·x + t·ε the ideal
x-prediction E[x | z_t, t] is closed form: per component z_t | k ~ N((1−t)μ_k, C_k) with
C_k = (1−t)²Σ_k + t²I, E[x | z_t, k] = μ_k + (1−t)Σ_k C_k⁻¹(z_t − (1−t)μ_k), mixed by the
posterior over components. Integrating the probability-flow ODE with it must reproduce the
mixture — weights, per-component means and covariances — so these tests check the sampling
half of the flow-matching contract end to end: the time grid and its shift, the
x → velocity conversion (`diffusion.velocity`), Euler / Heun, and `sample.denoise_block`'s
row layout for classifier-free guidance (first half conditional, second half their
unconditional twins), all with nothing learned in the way. Statistics are float64.

What an exact denoiser cannot see: the shift only re-spaces the grid, so a sampler whose
shift is inverted still integrates the same ODE. `test_sampler_times_follow_the_training_shift`
therefore pins the times the model is called at to the closed-form shifted grid and to the
direction of the training-time distribution.
"""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmpretrain import diffusion
from mmpretrain.generate import sample

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-3.0, 0.0, 0.5], [2.5, 2.0, -0.5], [1.5, -3.0, 1.0]])
COVS = np.array([[[0.50, 0.20, 0.05], [0.20, 0.30, 0.00], [0.05, 0.00, 0.20]],
                 [[0.20, -0.10, 0.00], [-0.10, 0.40, 0.10], [0.00, 0.10, 0.30]],
                 [[0.30, 0.00, 0.00], [0.00, 0.15, 0.05], [0.00, 0.05, 0.25]]])
DIM = MEANS.shape[1]
DEMO_SHIFT = diffusion.default_time_shift(8 * 8 * 128)     # the demo RAE's 8×8×128 latents


def component_terms(z, t):
  """Per component: log N(z; (1−t)μ_k, C_k) and E[x | z, k]. z [..., D], t [...]."""
  a = (1.0 - t)[..., None, None, None]                     # [..., 1, 1, 1]
  eye = jnp.eye(DIM, dtype=z.dtype)
  cov = a ** 2 * jnp.asarray(COVS, z.dtype) + (t[..., None, None, None] ** 2) * eye  # [..., K, D, D]
  resid = z[..., None, :] - a[..., 0] * jnp.asarray(MEANS, z.dtype)        # [..., K, D]
  solved = jnp.linalg.solve(cov, resid[..., None])[..., 0]                 # C⁻¹ r
  _, logdet = jnp.linalg.slogdet(cov)
  log_like = -0.5 * (jnp.sum(resid * solved, -1) + logdet + DIM * np.log(2 * np.pi))
  x_hat = jnp.asarray(MEANS, z.dtype) + a[..., 0] * jnp.einsum(
      "...kij,...kj->...ki", jnp.asarray(COVS, z.dtype), solved)
  return log_like, x_hat


def exact_x(z, t, component=None):
  """E[x | z_t, t] for the mixture (component None) or for one component alone."""
  log_like, x_hat = component_terms(z, t)
  if component is not None:
    return x_hat[..., component, :]
  post = jax.nn.softmax(jnp.log(jnp.asarray(WEIGHTS, z.dtype)) + log_like, axis=-1)
  return jnp.sum(post[..., None] * x_hat, axis=-2)


def mixture_velocity(prediction: str, min_t: float = 0.05, component=None):
  """The sampler's velocity from an exact x- or v-prediction head (through diffusion.velocity)."""
  def velocity(z, t):
    t_arr = jnp.full(z.shape[:-1], t, z.dtype)
    x_hat = exact_x(z, t_arr, component)
    # exact v-prediction E[ε − x | z] = (z − E[x | z]) / t (t > 0 wherever it is used)
    pred = x_hat if prediction == "x" else (z - x_hat) / jnp.maximum(t_arr, 1e-12)[..., None]
    return diffusion.velocity(pred, z, t_arr, prediction, min_t)
  return velocity


def assign(samples):
  """Nearest component by the true (Bayes) log density of each component."""
  log_like, _ = component_terms(jnp.asarray(samples), jnp.zeros(samples.shape[:-1]))
  return np.argmax(np.asarray(log_like) + np.log(WEIGHTS), axis=-1)


def assert_matches_mixture(samples, weight_atol=0.03, mean_atol=0.08, cov_rtol=0.2):
  samples = np.asarray(samples, np.float64).reshape(-1, DIM)
  assert np.all(np.isfinite(samples))
  labels = assign(samples)
  weights = np.bincount(labels, minlength=len(WEIGHTS)) / len(labels)
  np.testing.assert_allclose(weights, WEIGHTS, atol=weight_atol, err_msg="component weights")
  for k in range(len(WEIGHTS)):
    assert_matches_gaussian(samples[labels == k], k, mean_atol, cov_rtol)


def assert_matches_gaussian(samples, k, mean_atol=0.08, cov_rtol=0.2):
  samples = np.asarray(samples, np.float64).reshape(-1, DIM)
  np.testing.assert_allclose(samples.mean(0), MEANS[k], atol=mean_atol,
                             err_msg=f"mean of component {k}")
  cov = np.cov(samples.T)
  scale = np.sqrt(np.outer(np.diag(COVS[k]), np.diag(COVS[k])))   # relative to the std's
  np.testing.assert_array_less(np.abs(cov - COVS[k]) / scale, cov_rtol,
                               err_msg=f"covariance of component {k}: {cov} vs {COVS[k]}")


def test_reference_denoiser_is_the_posterior_mean():
  """The closed form itself, against Tweedie's formula on the marginal density (float64):
  for z = a·x + t·ε, E[a·x | z] = z + t²·∇ log p_t(z); and its limits at t = 1 and t → 0."""
  def log_density(point, t, k=None):
    log_like, _ = component_terms(point, t)
    if k is not None:
      return log_like[k]
    return jax.nn.logsumexp(jnp.log(jnp.asarray(WEIGHTS)) + log_like)

  @jax.jit
  def both_sides(z, t):
    """(closed form, Tweedie) for the mixture and for each component alone: [K + 1, N, D]."""
    ts = jnp.full(z.shape[:1], t)
    closed = [exact_x(z, ts)] + [exact_x(z, ts, component=k) for k in range(len(WEIGHTS))]
    scores = [jax.vmap(jax.grad(log_density), (0, None))(z, t)] + [
        jax.vmap(jax.grad(lambda p, t, k=k: log_density(p, t, k)), (0, None))(z, t)
        for k in range(len(WEIGHTS))]
    return jnp.stack(closed), jnp.stack([(z + t ** 2 * sc) / (1.0 - t) for sc in scores])

  with jax.enable_x64(True):
    z = jax.random.normal(jax.random.key(5), (64, DIM), jnp.float64) * 2.0
    for t in (0.05, 0.3, 0.6, 0.9):
      closed, tweedie = both_sides(z, jnp.asarray(t, jnp.float64))
      np.testing.assert_allclose(closed, tweedie, rtol=1e-9, atol=1e-9)
    z0 = z[:5]
    np.testing.assert_allclose(exact_x(z0, jnp.full((5,), 1.0)), np.tile(WEIGHTS @ MEANS, (5, 1)),
                               atol=1e-12)      # t = 1: nothing is known but the prior mean
    np.testing.assert_allclose(exact_x(z0, jnp.full((5,), 1e-9)), z0, atol=1e-6)


# Euler is first order: at the demo's 25 steps its bias is ~0.07 on the means (~2% of their
# norm) and ~0.14 on the covariances; Heun at 12 steps is within sampling noise. A sampler
# that skips the x → velocity conversion, flips a sign or reverses the grid is off by units.
EULER_TOL = dict(weight_atol=0.035, mean_atol=0.12, cov_rtol=0.3)
HEUN_TOL = dict(weight_atol=0.03, mean_atol=0.05, cov_rtol=0.15)


@pytest.mark.parametrize("sampler,steps,shift,prediction,tol", [
    ("euler", 25, DEMO_SHIFT, "x", EULER_TOL),     # the demo's sampler settings
    ("euler", 25, 1.0, "v", EULER_TOL),
    ("heun", 12, DEMO_SHIFT, "x", HEUN_TOL),
    ("heun", 12, 0.5, "v", HEUN_TOL),              # the pixel arm's shift (32·32·1 latents)
])
def test_samplers_reproduce_a_gaussian_mixture(sampler, steps, shift, prediction, tol):
  with jax.enable_x64(True):
    z1 = jax.random.normal(jax.random.key(0), (6000, DIM), jnp.float64)
    times = diffusion.sampling_times(steps, shift)
    out = jax.jit(lambda z: diffusion.SAMPLERS[sampler](mixture_velocity(prediction), z, times))(z1)
  assert_matches_mixture(out, **tol)


# --- sample.denoise_block with a stand-in model whose head is the exact denoiser -----------

class ExactModel:
  """Stands in for Transfusion.decode: block row r with tokens[r] = k + 1 is conditioned on
  component k (its data are N(μ_k, Σ_k)); tokens = 0 is unconditional (the whole mixture)."""

  def __init__(self, prediction: str, seen_times: list):
    self.prediction, self.seen_times = prediction, seen_times

  def decode(self, inputs, cache, index):
    z, t = inputs.visual_latents, inputs.timesteps
    jax.debug.callback(lambda tt: self.seen_times.append(float(np.asarray(tt).flat[0])), t)
    cond = inputs.tokens[..., None]                       # [rows, T, 1]
    log_like, x_comp = component_terms(z, t)
    post = jax.nn.softmax(jnp.log(jnp.asarray(WEIGHTS, z.dtype)) + log_like, axis=-1)
    x_mix = jnp.sum(post[..., None] * x_comp, axis=-2)
    x_hat = x_mix
    for k in range(len(WEIGHTS)):
      x_hat = jnp.where(cond == k + 1, x_comp[..., k, :], x_hat)
    pred = x_hat if self.prediction == "x" else (z - x_hat) / jnp.maximum(t, 1e-12)[..., None]
    return None, pred, cache


def fake_run(*, sampler="euler", steps=25, shift=DEMO_SHIFT, prediction="x", cfg_scale=3.0,
                 seen_times=None):
  cfg = ml_collections.ConfigDict({"diffusion": {
      "prediction": prediction, "min_t": 0.05, "sample_steps": steps, "sampler": sampler,
      "cfg_scale": cfg_scale, "skip": False}})
  model = ExactModel(prediction, [] if seen_times is None else seen_times)
  return types.SimpleNamespace(config=cfg, time_shift=shift, model=lambda params: model)


def block_of(tokens_per_row, length):
  rows = len(tokens_per_row)
  block = {k: jnp.zeros((rows, length), jnp.int32) for k in sample.ID_FIELDS}
  block["tokens"] = jnp.repeat(jnp.asarray(tokens_per_row, jnp.int32)[:, None], length, axis=1)
  block["modality"] = jnp.full((rows, length), 2, jnp.int32)
  return block


def run_block(run, tokens_per_row, z1, guided):
  block = block_of(tokens_per_row, z1.shape[1])
  with jax.enable_x64(True):
    return np.asarray(sample.denoise_block(run, None, None, block, 0, jnp.asarray(z1),
                                           guided))


def noise(rows, length, seed=1):
  return np.random.default_rng(seed).normal(size=(rows, length, DIM))


@pytest.mark.parametrize("sampler,steps,prediction", [("euler", 25, "x"), ("heun", 12, "v")])
def test_denoise_block_unguided_reproduces_the_mixture(sampler, steps, prediction):
  run = fake_run(sampler=sampler, steps=steps, prediction=prediction)
  tol = EULER_TOL if sampler == "euler" else HEUN_TOL
  assert_matches_mixture(run_block(run, [0] * 24, noise(24, 256), guided=False), **tol)


def test_denoise_block_cfg_scale_one_is_the_conditional_distribution():
  """Guided rows: 3 conditional rows (one per component) + their unconditional twins. With
  scale 1 the guided draw equals the conditional draw from the same noise, and it follows
  N(μ_k, Σ_k) — not the mixture."""
  z1 = noise(3, 2000)
  guided = run_block(fake_run(cfg_scale=1.0), [1, 2, 3, 0, 0, 0], z1, guided=True)
  conditional = run_block(fake_run(cfg_scale=1.0), [1, 2, 3], z1, guided=False)
  np.testing.assert_allclose(guided, conditional, atol=1e-9)
  for k in range(3):
    assert_matches_gaussian(guided[k], k, EULER_TOL["mean_atol"], EULER_TOL["cov_rtol"])
    assert np.mean(assign(guided[k]) == k) > 0.99


def test_denoise_block_cfg_pushes_toward_the_condition():
  """Scale 3 (the demo's): every draw lands on the requested component, and the guided
  shift points away from the unconditional mixture (the twins are the second half)."""
  z1 = noise(3, 1000, seed=2)
  guided = run_block(fake_run(cfg_scale=3.0), [1, 2, 3, 0, 0, 0], z1, guided=True)
  overall = WEIGHTS @ MEANS
  for k in range(3):
    assert np.mean(assign(guided[k]) == k) > 0.995
    # guidance extrapolates away from the mixture: the mean moves past μ_k, not toward it
    away = MEANS[k] - overall
    assert (guided[k].mean(0) - MEANS[k]) @ away > 0
  unguided = run_block(fake_run(cfg_scale=0.0), [1, 2, 3, 0, 0, 0], z1, guided=True)
  assert_matches_mixture(unguided, **EULER_TOL)         # scale 0: the unconditional twins


def test_sampler_times_follow_the_training_shift():
  """The model is called at s·u/(1 + (s−1)·u) of the uniform grid u = 1 … 1/N (t = 1 is noise),
  with the same shift, and in the same direction, as the training-time t distribution."""
  s, steps = DEMO_SHIFT, 25
  seen = []
  run_block(fake_run(steps=steps, shift=s, seen_times=seen), [0, 0], noise(2, 4), guided=False)
  jax.effects_barrier()
  u = np.linspace(1.0, 0.0, steps + 1)[:-1]
  want = s * u / (1.0 + (s - 1.0) * u)
  np.testing.assert_allclose(sorted(seen, reverse=True), want, rtol=1e-6)
  # training: logit-normal(0, 1) then the shift; its median maps u = 0.5 the same way
  t_train = np.asarray(diffusion.sample_time(jax.random.key(0), (100_000,), mean=0.0, std=1.0,
                                             shift=s))
  np.testing.assert_allclose(np.median(t_train), s * 0.5 / (1.0 + (s - 1.0) * 0.5), atol=5e-3)
  assert np.median(t_train) > 0.5                       # s > 1 moves training toward noise
