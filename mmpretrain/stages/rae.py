"""`mmpretrain train-rae`: freeze an encoder, measure its per-channel latent statistics on
the data, train the ViT decoder on noise-augmented latents; writes
<workdir>/representation for `config.visual.checkpoint`."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmpretrain import storage
from mmpretrain.data import pipeline
from mmpretrain.data.images import image_batches, skipped_records, stage_batches
from mmpretrain.encoders import store
from mmpretrain.encoders.vit import VisionTransformer, normalize
from mmpretrain.pixels import signed_psnr, to_signed
from mmpretrain.stages import gan
from mmpretrain.stages.loop import REPRESENTATION_DIR, data_rows, train_model, write_summary
from mmpretrain.tokenizers import rae as rae_lib

# The RAE's decoder and, with rae.gan_weight > 0, the discriminator train; the encoder never.
TRAINED = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("decoder"),
                                     nnx.PathContains("discriminator")))


class RAETraining(nnx.Module):
  """What the stage optimizes: the RAE, and the discriminator of the optional GAN term
  (kept outside the RAE, which is saved without it)."""

  def __init__(self, rae: rae_lib.RAE, discriminator: gan.PatchDiscriminator | None):
    self.rae, self.discriminator = rae, discriminator


def latent_stats(model: rae_lib.RAE, batches, num_batches: int):
  """Per-channel mean and std of the encoder's tokens over `num_batches`, and the
  covariance of the tokens so normalized (float64 sums)."""
  encode = nnx.jit(lambda m, frames: m.encoder(normalize(frames, m.encoder.cfg))["tokens"])
  total = products = count = 0
  for _ in range(num_batches):
    tokens = np.asarray(encode(model, next(batches)["images"]), np.float64)
    tokens = tokens.reshape(-1, tokens.shape[-1])
    total, products = total + tokens.sum(0), products + tokens.T @ tokens
    count += len(tokens)
  mean = total / count
  covariance = products / count - np.outer(mean, mean)
  std = np.sqrt(np.maximum(np.diag(covariance), 1e-12))
  return mean, std, covariance / np.outer(std, std)


def set_latent_stats(model: rae_lib.RAE, batches, num_batches: int) -> None:
  """The RAE's per-channel normalization and, with fewer latent channels than the
  encoder's width, its whitened principal projection, from `num_batches` of `batches`."""
  mean, std, correlation = latent_stats(model, batches, num_batches)
  model.mean[...], model.std[...] = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  if model.projection is not None:
    model.projection[...] = jnp.asarray(
        whitened_principal_channels(correlation, model.decoder.cfg.latent_dim), jnp.float32)


def whitened_principal_channels(covariance: np.ndarray, channels: int) -> np.ndarray:
  """[width, channels]: the leading eigenvectors of `covariance`, each divided by the square
  root of its eigenvalue, so the projected channels have unit variance."""
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  leading = np.argsort(eigenvalues)[::-1][:channels]
  return eigenvectors[:, leading] / np.sqrt(np.maximum(eigenvalues[leading], 1e-12))


def make_rae_loss(r):
  """The loss of config.rae `r`."""
  noise_tau, perceptual_weight, gan_weight = r.noise_tau, r.perceptual_weight, r.gan_weight

  def rae_loss(training: RAETraining, batch, rng):
    """L1 to the pixels from latents + σ·ε, σ ~ U(0, τ) per image (the decoder must
    tolerate the diffusion model's imperfect latents), plus the optional perceptual and
    adversarial (hinge, PatchGAN) terms."""
    model = training.rae
    target = to_signed(batch["images"])
    latents = model.encode(batch["images"])
    sigma_key, noise_key = jax.random.split(rng)
    sigma = jax.random.uniform(sigma_key, (latents.shape[0], 1, 1), maxval=noise_tau)
    noisy = latents + sigma * jax.random.normal(noise_key, latents.shape)
    reconstruction = model.decode(noisy)
    l1 = jnp.mean(jnp.abs(reconstruction - target))
    metrics = {"l1": l1, "psnr": jnp.mean(signed_psnr(reconstruction, target))}
    loss = l1
    if perceptual_weight > 0:
      features = model.encode_unit(jnp.clip((reconstruction + 1.0) / 2.0, 0.0, 1.0))
      perceptual = jnp.mean((features - latents) ** 2)
      metrics["perceptual"] = perceptual
      loss = loss + perceptual_weight * perceptual
    if gan_weight > 0:
      generator, critic = gan.adversarial_terms(training.discriminator, target, reconstruction)
      metrics.update(gan_generator=generator, gan_discriminator=critic)
      loss = loss + gan_weight * generator + critic
    return loss, metrics
  return rae_loss


def reconstruction_psnr(model: rae_lib.RAE, batches, num_batches: int) -> float:
  """Mean PSNR of clean-latent reconstructions (no noise) over `num_batches`."""
  reconstruct = nnx.jit(lambda m, frames: m.decode(m.encode(frames)))
  scores = []
  for _ in range(num_batches):
    frames = next(batches)["images"]
    scores.append(np.asarray(signed_psnr(reconstruct(model, frames), to_signed(frames))))
  return float(np.mean(np.concatenate(scores)))


def rae_training(config, encoder: VisionTransformer) -> RAETraining:
  """What train-rae optimizes around `encoder` (abstract under nnx.eval_shape: the shapes
  `mmpretrain compile --program=train_rae` needs)."""
  r = config.rae
  model = rae_lib.RAE(encoder, rae_lib.decoder_config(config, encoder.cfg),
                      rngs=nnx.Rngs(config.seed))
  discriminator = (gan.PatchDiscriminator(config.data.image_channels, r.discriminator_width,
                                          rngs=nnx.Rngs(config.seed + 1))
                   if r.gan_weight > 0 else None)
  return RAETraining(model, discriminator)


def encoder_directory(config) -> str:
  if not config.rae.encoder:
    raise ValueError("config.rae.encoder is empty: set it to `mmpretrain train-encoder`'s "
                     "<workdir>/encoder or a Hugging Face SigLIP / DINOv2 checkpoint directory")
  return config.rae.encoder


def train_rae(config, workdir: str) -> dict:
  r = config.rae
  encoder = store.load_encoder(encoder_directory(config))
  tok = pipeline.load_tokenizer(config)
  training = rae_training(config, encoder)
  model = training.rae
  batches = stage_batches(config, tok, r.datasets, caption_len=1, rows=data_rows(config))

  def measure_latents(training: RAETraining) -> None:
    # From the stream's first stats_batches global batches, every process reading all
    # their rows (so all measure the same); training starts after them.
    set_latent_stats(training.rae, stage_batches(config, tok, r.datasets, caption_len=1),
                     r.stats_batches)
    for _ in range(r.stats_batches):
      next(batches)

  trained = train_model(config, workdir, training, make_rae_loss(r), batches, name="rae",
                        wrt=TRAINED, prepare=measure_latents)
  if trained.preempted:
    return trained.summary()
  held_out = image_batches(config, tok, r.datasets, split="validation",
                           batch_size=config.data.batch_size, caption_len=1, seed=0)
  directory = storage.join(workdir, REPRESENTATION_DIR)
  rae_lib.save_rae(directory, model)
  encoder_cfg = model.encoder.cfg
  summary = {**trained.summary(), "representation": directory,
             "latent_grid": [encoder_cfg.grid, encoder_cfg.grid, model.decoder.cfg.latent_dim],
             "validation_psnr": reconstruction_psnr(model, held_out, 4),
             "skipped_records": skipped_records(batches)}
  return write_summary(workdir, summary)
