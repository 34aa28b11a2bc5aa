"""The latent diagnosis's measures against constructions whose answer is known."""
import numpy as np

from mmpretrain.analysis import latents


def test_off_subspace_norm_is_zero_inside_the_data_and_the_added_norm_outside():
  rng = np.random.default_rng(0)
  rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  data = 5.0 + rng.normal(size=(200, 3)) @ rotation[:3]        # a 3-D affine subspace
  mean, basis = latents.principal_subspace(data, 3)
  assert latents.off_subspace_norm(data, mean, basis) < 1e-9
  outside = data[:10] + 0.7 * rotation[5]                     # orthogonal to the subspace
  np.testing.assert_allclose(latents.off_subspace_norm(outside, mean, basis), 0.7, rtol=1e-9)
  # With fewer components than the data uses, what is left is the dropped directions' part.
  mean2, basis2 = latents.principal_subspace(data, 2)
  left = [np.linalg.norm((d - mean2) - (d - mean2) @ basis2.T @ basis2) for d in data]
  np.testing.assert_allclose(latents.off_subspace_norm(data, mean2, basis2), np.mean(left))


def test_nearest_labels_match_a_loop():
  rng = np.random.default_rng(1)
  points, means = rng.normal(size=(30, 6)), rng.normal(size=(4, 6))
  reference, labels = rng.normal(size=(25, 6)), rng.integers(0, 4, 25)
  want_mean = [min(range(4), key=lambda c: np.sum((p - means[c]) ** 2)) for p in points]
  want_nn = [labels[min(range(25), key=lambda j: np.sum((p - reference[j]) ** 2))]
             for p in points]
  np.testing.assert_array_equal(latents.nearest_mean_labels(points, means), want_mean)
  np.testing.assert_array_equal(latents.nearest_neighbour_labels(points, reference, labels),
                                want_nn)


def test_token_collages_take_each_position_from_a_latent_of_the_class():
  rng = np.random.default_rng(2)
  tokens, labels = rng.normal(size=(40, 5, 3)), np.arange(40) % 4
  collages, collage_labels = latents.token_collages(tokens, labels, 3, 4, rng)
  assert collages.shape == (12, 5, 3)
  np.testing.assert_array_equal(collage_labels, np.repeat(np.arange(4), 3))
  for collage, label in zip(collages, collage_labels):
    for position, token in enumerate(collage):
      sources = np.flatnonzero((tokens[:, position] == token).all(-1))
      assert len(sources) == 1 and labels[sources[0]] == label
