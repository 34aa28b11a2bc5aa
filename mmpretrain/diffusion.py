"""Flow matching on continuous visual latents.

Convention: z_t = (1 - t)·x + t·ε, so t = 0 is clean data and t = 1 is pure noise, and the
velocity is v = dz/dt = ε - x. Sampling integrates from t = 1 down to t = 0.
"""
import math

import jax
import jax.numpy as jnp


def default_time_shift(latent_numel: int, base_numel: int = 4096) -> float:
  """Dimension-dependent shift s = sqrt(numel / 4096) (RAE: 16·16·768 → s ≈ 6.9)."""
  return math.sqrt(latent_numel / base_numel)


def shift_time(t: jnp.ndarray, shift: float) -> jnp.ndarray:
  """t' = s·t / (1 + (s - 1)·t). With t = 1 as noise, s > 1 moves t toward noise."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(rng, shape, *, mean: float, std: float, shift: float) -> jnp.ndarray:
  """Logit-normal t (sigmoid of a Gaussian), then the resolution shift."""
  t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape, jnp.float32))
  return shift_time(t, shift)


def add_noise(x: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """The linear path z_t; t broadcasts against x's trailing feature axis."""
  t = t[..., None]
  return (1.0 - t) * x + t * noise


SPACES = ("x", "v", "eps")     # clean latent, velocity ε − x, noise


def flow_target(x: jnp.ndarray, noise: jnp.ndarray, space: str) -> jnp.ndarray:
  """The true value in `space`: the clean latent x, the velocity ε − x, or the noise ε."""
  if space == "x":
    return x
  if space == "v":
    return noise - x
  if space == "eps":
    return noise
  raise ValueError(f"unknown prediction space {space!r}; use one of {SPACES}")


def convert(pred: jnp.ndarray, z: jnp.ndarray, t: jnp.ndarray, prediction: str, space: str,
            min_t: float) -> jnp.ndarray:
  """A head output in `prediction` space re-expressed in `space`, through z = (1−t)x + tε.

  Each conversion divides by t or 1 − t where the prediction cannot tell x from ε; those
  are clipped at min_t (x from ε near t = 1, ε or v from x near t = 0), as in JiT.
  """
  if prediction == space:
    return pred
  t = t[..., None]
  near_noise, near_data = jnp.maximum(1.0 - t, min_t), jnp.maximum(t, min_t)
  formulas = {
      ("x", "v"): lambda: (z - pred) / near_data,
      ("x", "eps"): lambda: (z - (1.0 - t) * pred) / near_data,
      ("v", "x"): lambda: z - t * pred,
      ("v", "eps"): lambda: z + (1.0 - t) * pred,
      ("eps", "x"): lambda: (z - t * pred) / near_noise,
      ("eps", "v"): lambda: (pred - z) / near_noise,
  }
  if (prediction, space) not in formulas:
    raise ValueError(f"cannot convert {prediction!r} to {space!r}; spaces are {SPACES}")
  return formulas[prediction, space]()


def skip_connection(raw: jnp.ndarray, z: jnp.ndarray, t: jnp.ndarray,
                    data_std: float) -> jnp.ndarray:
  """x̂ = c_skip(t)·z + c_out(t)·raw: EDM's preconditioning on the linear path.

  c_skip = σ²(1 − t) / ((1 − t)²σ² + t²) is the best linear guess of x from z for data of
  std σ, and c_out = tσ / sqrt((1 − t)²σ² + t²) the std of what it leaves, so the network
  predicts a unit-scale residual; near t = 0 the input passes through instead of having to
  be copied through every layer.
  """
  t = t[..., None]
  var = data_std ** 2
  denom = (1.0 - t) ** 2 * var + t ** 2
  return (1.0 - t) * var / denom * z + t * data_std / jnp.sqrt(denom) * raw


def head_prediction(raw: jnp.ndarray, z: jnp.ndarray, t: jnp.ndarray, dcfg) -> jnp.ndarray:
  """The flow head's output as a prediction in dcfg.prediction's space."""
  return skip_connection(raw, z, t, dcfg.data_std) if dcfg.skip else raw


def velocity(pred: jnp.ndarray, z: jnp.ndarray, t: jnp.ndarray, prediction: str,
             min_t: float) -> jnp.ndarray:
  """The ODE velocity of a head output, for sampling. x-prediction: v = (z − x̂) / t with
  t itself: the samplers evaluate it at grid times t > 0, where clipping at min_t would
  stop short of x̂ (only Heun's discarded corrector reaches t = 0, hence the tiny floor).
  ε-prediction divides by max(1 − t, min_t): at t = 1 it cannot tell x from ε."""
  if prediction == "x":
    return (z - pred) / jnp.maximum(t, jnp.finfo(jnp.float32).tiny)[..., None]
  return convert(pred, z, t, prediction, "v", min_t)


def sampling_times(num_steps: int, shift: float) -> jnp.ndarray:
  """num_steps + 1 decreasing times from 1 to 0: a uniform grid warped by the same shift."""
  return shift_time(jnp.linspace(1.0, 0.0, num_steps + 1), shift)


def euler_sample(velocity_fn, z1: jnp.ndarray, times: jnp.ndarray) -> jnp.ndarray:
  """Integrates dz/dt = velocity_fn(z, t) from times[0] to times[-1] with Euler steps."""
  def step(z, t_pair):
    t, t_next = t_pair
    return z + (t_next - t) * velocity_fn(z, t), None
  z0, _ = jax.lax.scan(step, z1, (times[:-1], times[1:]))
  return z0


def heun_sample(velocity_fn, z1: jnp.ndarray, times: jnp.ndarray) -> jnp.ndarray:
  """Heun's second-order method (as in EDM): an Euler predictor, then the average of the
  velocities at both ends; the step that lands on t = 0 stays Euler (the velocity of an
  x-prediction model is not defined there). Two model calls per step."""
  def step(z, t_pair):
    t, t_next = t_pair
    v = velocity_fn(z, t)
    euler = z + (t_next - t) * v
    corrected = z + (t_next - t) * 0.5 * (v + velocity_fn(euler, t_next))
    return jnp.where(t_next > 0, corrected, euler), None
  z0, _ = jax.lax.scan(step, z1, (times[:-1], times[1:]))
  return z0


SAMPLERS = {"euler": euler_sample, "heun": heun_sample}


def classifier_free_guidance(cond: jnp.ndarray, uncond: jnp.ndarray, scale: float):
  """v = v_u + w·(v_c - v_u); w = 1 is the conditional prediction."""
  return uncond + scale * (cond - uncond)
