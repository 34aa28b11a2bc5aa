"""Where drawing from latents fails: the generator, or the decoder that renders its output.

Images are drawn for the ten digit captions, and their latents are read three ways before
anything is decoded: the nearest class mean and the label of the nearest real latent
(does the generator put each draw near real latents of the class its caption asks for?),
and the energy outside the real latents' principal subspace (does it leave directions the
data never uses, which a decoder trained on real latents has never seen?). The decoded
images are then read by the judge classifier, as are decoded class means and same-class
token collages (every token position from another real digit of the class): if those
read well and the draws do not, the decoder is not what fails on its own.
"""
import jax
import jax.numpy as jnp
import numpy as np

from mmpretrain import storage
from mmpretrain.data.images import image_batches
from mmpretrain.generate import sample
from mmpretrain.encoders.judge import load_classifier
from mmpretrain.train.evaluate import classified_accuracy, restore_params


def principal_subspace(latents: np.ndarray, components: int):
  """(mean [D], orthonormal basis [components, D]) of flattened latents [N, D]."""
  mean = latents.mean(0)
  _, _, basis = np.linalg.svd(latents - mean, full_matrices=False)
  return mean, basis[:components]


def off_subspace_norm(latents: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> float:
  """Mean norm of what lies outside span(basis) around `mean`: [N, D] -> scalar."""
  centred = latents - mean
  return float(np.linalg.norm(centred - centred @ basis.T @ basis, axis=1).mean())


def nearest_mean_labels(latents: np.ndarray, means: np.ndarray) -> np.ndarray:
  """Index of the nearest of `means` [C, D] for each of `latents` [N, D]."""
  return np.argmin(((latents[:, None] - means[None]) ** 2).sum(-1), -1)


def nearest_neighbour_labels(latents: np.ndarray, reference: np.ndarray,
                             labels: np.ndarray) -> np.ndarray:
  """The label of the nearest `reference` row [M, D] for each of `latents` [N, D]."""
  squared = ((latents ** 2).sum(1)[:, None] + (reference ** 2).sum(1)[None]
             - 2 * latents @ reference.T)
  return labels[np.argmin(squared, 1)]


def token_collages(tokens: np.ndarray, labels: np.ndarray, per_class: int, classes: int,
                   rng: np.random.Generator):
  """Latent tokens [N, T, D] -> (collages [classes·per_class, T, D], their labels): each
  token position taken from a random real latent of the class."""
  positions = np.arange(tokens.shape[1])
  collages = [tokens[rng.choice(np.flatnonzero(labels == c), size=len(positions)), positions]
              for c in range(classes) for _ in range(per_class)]
  return np.stack(collages), np.repeat(np.arange(classes), per_class)


def analyze(config, workdir: str, per_class: int = 10, real: int = 2000,
            components: tuple = (32, 512)) -> dict:
  """The diagnosis of a run's newest checkpoint; writes <workdir>/analysis/latents.json and
  a PNG of the draws, the collages and the decoded class means."""
  tok, run, params, step = restore_params(config, workdir)
  spec = run.spec
  classifier, meta = load_classifier(config.eval.classifier)
  judge = lambda images: np.asarray(jnp.argmax(classifier(jnp.asarray(images)), -1))
  frame_decoder = sample.make_frame_decoder(run)      # jitted once, for every decode below
  decode = lambda tokens: np.asarray(frame_decoder(jnp.asarray(tokens)))
  batch = next(image_batches(config, tok, {config.classifier.dataset: 1.0}, split="train",
                             batch_size=real, caption_len=1, seed=config.seed, repeat=False))
  tokens = np.asarray(run.latent_tokens(batch["images"][:, None]))
  labels = batch["label"]
  classes = meta["num_classes"]
  flat = tokens.reshape(len(tokens), -1)

  prompts = list(config.eval.generation_prompts)
  requested = np.repeat(np.arange(len(prompts)), per_class)
  draw = sample.make_block_sampler(run, guided=True)
  prompt = sample.block_prompt(
      sample.caption_documents(tok, [prompts[k] for k in requested], spec), spec)
  no_frames = jnp.zeros((2 * len(requested), 1, tokens.shape[-1]), jnp.float32)
  drawn = np.asarray(draw(params, prompt, no_frames, jax.random.key(config.seed)))
  drawn_flat = drawn.reshape(len(drawn), -1)

  means = np.stack([flat[labels == c].mean(0) for c in range(classes)])
  collages, collage_labels = token_collages(tokens, labels, per_class, classes,
                                            np.random.default_rng(config.seed))
  drawn_images, collage_images = decode(drawn), decode(collages)
  mean_images = decode(means.reshape(classes, *tokens.shape[1:]))
  result = {
      "step": step, "images": len(drawn),
      "drawn/judge": classified_accuracy(judge(drawn_images), requested),
      "drawn/nearest_class_mean": classified_accuracy(nearest_mean_labels(drawn_flat, means),
                                                      requested),
      "drawn/nearest_real_label": classified_accuracy(
          nearest_neighbour_labels(drawn_flat, flat, labels), requested),
      "real/decoded_judge": classified_accuracy(judge(decode(tokens[:500])), labels[:500]),
      "class_means/decoded_judge": classified_accuracy(judge(mean_images), np.arange(classes)),
      "collages/decoded_judge": classified_accuracy(judge(collage_images), collage_labels),
  }
  held_out = flat[len(flat) // 2:]
  for k in components:
    mean, basis = principal_subspace(flat[:len(flat) // 2], k)
    result[f"drawn/off_subspace_norm_{k}"] = off_subspace_norm(drawn_flat, mean, basis)
    result[f"real/off_subspace_norm_{k}"] = off_subspace_norm(held_out, mean, basis)
  directory = storage.join(workdir, "analysis")
  storage.makedirs(directory)
  storage.write_json(storage.join(directory, "latents.json"), result)
  grid = np.concatenate([drawn_images, collage_images, mean_images])
  storage.save_image(storage.join(directory, "latents.png"),
                     sample.image_grid(grid, columns=per_class))
  return result
