"""Flow-matching pieces against closed-form float64 numpy math."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmpretrain import diffusion


def test_default_shift_for_rae_latents():
  # RAE DINOv2-B: 16·16·768 latents -> s = sqrt(196608/4096) = sqrt(48)
  assert diffusion.default_time_shift(16 * 16 * 768) == pytest.approx(np.sqrt(48.0))
  assert diffusion.default_time_shift(4096) == pytest.approx(1.0)


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0, 6.93])
def test_shift_formula(s):
  t = np.linspace(0.0, 1.0, 101)
  expected = s * t / (1.0 + (s - 1.0) * t)
  got = np.asarray(diffusion.shift_time(jnp.asarray(t, jnp.float32), s))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert got[0] == 0.0 and got[-1] == pytest.approx(1.0)
  assert np.all(np.diff(got) >= 0)                 # monotone
  if s > 1:                                        # s > 1 moves t toward noise (t = 1)
    assert np.all(got[1:-1] > t[1:-1])


def test_logit_normal_time_statistics():
  t = np.asarray(diffusion.sample_time(jax.random.key(0), (200_000,), mean=0.0, std=1.0, shift=1.0))
  logit = np.log(t / (1 - t))
  assert abs(logit.mean()) < 0.01 and abs(logit.std() - 1.0) < 0.01


def test_noising_path_and_targets():
  rng = np.random.default_rng(0)
  x, eps = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
  t = rng.uniform(size=(2, 5))
  z = np.asarray(diffusion.add_noise(jnp.asarray(x), jnp.asarray(eps), jnp.asarray(t)))
  np.testing.assert_allclose(z, (1 - t[..., None]) * x + t[..., None] * eps, rtol=1e-6)
  np.testing.assert_allclose(diffusion.flow_target(x, eps, "x"), x)
  np.testing.assert_allclose(diffusion.flow_target(x, eps, "v"), eps - x)   # dz/dt
  np.testing.assert_allclose(diffusion.flow_target(x, eps, "eps"), eps)
  with pytest.raises(ValueError, match="prediction space"):
    diffusion.flow_target(x, eps, "score")


@pytest.mark.parametrize("prediction", diffusion.SPACES)
@pytest.mark.parametrize("space", diffusion.SPACES)
def test_every_prediction_converts_to_every_space(prediction, space):
  """A perfect head output in one space, converted, is the truth in the other (float64),
  away from the clipped ends; near them the division uses min_t."""
  rng = np.random.default_rng(2)
  x, eps = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
  t = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.95])
  z = (1 - t[:, None]) * x + t[:, None] * eps
  truth = {"x": x, "v": eps - x, "eps": eps}
  with jax.enable_x64(True):
    got = np.asarray(diffusion.convert(jnp.asarray(truth[prediction]), jnp.asarray(z),
                                       jnp.asarray(t), prediction, space, min_t=0.01))
  np.testing.assert_allclose(got, truth[space], rtol=1e-10, atol=1e-10)


def test_conversions_clip_the_division_near_the_ends():
  z, pred = jnp.asarray([[1.0]]), jnp.asarray([[0.25]])
  # x-pred at t = 0.01 < min_t: v = (z − x̂) / min_t; ε-pred at t = 0.99: x = (z − tε̂) / min_t
  v = diffusion.convert(pred, z, jnp.asarray([0.01]), "x", "v", min_t=0.05)
  x = diffusion.convert(pred, z, jnp.asarray([0.99]), "eps", "x", min_t=0.05)
  np.testing.assert_allclose(np.asarray(v), [[0.75 / 0.05]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(x), [[(1.0 - 0.99 * 0.25) / 0.05]], rtol=1e-6)


@pytest.mark.parametrize("prediction", diffusion.SPACES)
def test_perfect_prediction_gives_true_velocity(prediction):
  rng = np.random.default_rng(1)
  x, eps = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  t = rng.uniform(0.2, 0.9, size=(4,))
  z = (1 - t[:, None]) * x + t[:, None] * eps
  pred = {"x": x, "v": eps - x, "eps": eps}[prediction]
  v = np.asarray(diffusion.velocity(jnp.asarray(pred), jnp.asarray(z), jnp.asarray(t), prediction,
                                    min_t=0.05))
  np.testing.assert_allclose(v, eps - x, rtol=1e-4, atol=1e-5)


def test_euler_with_true_velocity_recovers_data():
  # For a single data point x0 the exact velocity field is (z - x0)/t; straight paths mean
  # Euler is exact on any grid.
  x0 = jnp.asarray([0.5, -1.0, 2.0])
  z1 = jnp.asarray([1.0, 0.3, -0.7])
  times = diffusion.sampling_times(7, shift=2.0)
  out = diffusion.euler_sample(lambda z, t: (z - x0) / t, z1, times)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-5)


def test_cfg_scale_one_is_conditional():
  c, u = jnp.asarray([1.0, 2.0]), jnp.asarray([-3.0, 0.5])
  np.testing.assert_allclose(diffusion.classifier_free_guidance(c, u, 1.0), c)
  np.testing.assert_allclose(diffusion.classifier_free_guidance(c, u, 3.0), u + 3 * (c - u))


def gaussian_velocity(mean: float, var: float):
  """The exact velocity E[ε − x | z_t] for data x ~ N(mean, var) on z_t = (1−t)x + tε."""
  def velocity(z, t):
    marginal = (1 - t) ** 2 * var + t ** 2
    residual = z - (1 - t) * mean
    return t / marginal * residual - (mean + (1 - t) * var / marginal * residual)
  return velocity


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_samplers_converge_to_the_closed_form_flow_at_their_order(shift):
  """For Gaussian data the probability-flow ODE is affine: z1 ↦ mean + sqrt(var)·z1 (float64
  reference). Euler errors fall ~linearly in the step count, Heun's ~quadratically."""
  mean, var = 0.7, 0.3
  z1 = np.random.default_rng(0).normal(size=64)
  exact = mean + np.sqrt(var) * z1
  with jax.enable_x64(True):
    def error(sampler, steps):
      times = diffusion.sampling_times(steps, shift)
      out = diffusion.SAMPLERS[sampler](gaussian_velocity(mean, var), jnp.asarray(z1), times)
      return float(np.abs(np.asarray(out) - exact).max())
    euler = [error("euler", n) for n in (16, 32)]
    heun = [error("heun", n) for n in (16, 32)]
  assert 1.6 < euler[0] / euler[1] < 2.4            # first order
  assert heun[0] / heun[1] > 3.0                   # second order (last step is Euler)
  assert heun[1] < euler[1] / 5
