"""FID's statistics and distance, as pytorch-fid computes them: the mean and covariance of
pool3 features in float64, stored as a standard .npz (keys `mu`, `sigma`, the files
pytorch-fid and its precomputed reference sets use), and the Fréchet distance between
two such Gaussians through scipy's general matrix square root with pytorch-fid's epsilon
fallback, so that a figure here is the figure pytorch-fid prints.
"""
import io

import numpy as np
from absl import logging
from scipy import linalg

from mmpretrain import storage

EPSILON = 1e-6          # added to both diagonals when the covariance product is singular


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) of features [N, D]: pytorch-fid's float64 mean and np.cov."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"FID statistics need at least 2 feature rows, got shape "
                     f"{features.shape}")
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez_compressed(buffer, mu=mu, sigma=sigma)
  storage.write_bytes(path, buffer.getvalue())


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of a .npz, local or gs://, checked for the keys and their shapes."""
  if not storage.exists(path):
    raise FileNotFoundError(f"{path}: no such statistics file")
  try:
    with storage.open_read(path) as file, np.load(io.BytesIO(file.read())) as archive:
      arrays = {key: archive[key] for key in ("mu", "sigma") if key in archive.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npz ({type(e).__name__})") from e
  for key in ("mu", "sigma"):
    if key not in arrays:
      raise ValueError(f"{path}: no array '{key}' (FID statistics files hold 'mu' and "
                       "'sigma')")
  mu, sigma = arrays["mu"], arrays["sigma"]
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ValueError(f"{path}: mu has shape {list(mu.shape)} and sigma {list(sigma.shape)}; "
                     "expected [D] and [D, D]")
  return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = EPSILON) -> float:
  """‖mu1 − mu2‖² + tr(sigma1 + sigma2 − 2 (sigma1 sigma2)^½), step for step as
  pytorch-fid's calculate_frechet_distance."""
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics of different feature sizes: mu {list(mu1.shape)} against "
                     f"{list(mu2.shape)}")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    logging.warning("the covariance product is singular: adding %s to the diagonal of "
                    "both covariances", eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"the covariance product's square root has an imaginary component "
                       f"of {np.max(np.abs(covmean.imag)):.3g}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
