"""`mmpretrain train-vae`: the VAE baseline trained in-project (L1 + kl_weight·KL), its
latents then scaled to unit standard deviation (as Stable Diffusion's 0.18215 was
chosen); writes <workdir>/representation for `config.visual.checkpoint`."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmpretrain import storage
from mmpretrain.data import pipeline
from mmpretrain.data.images import image_batches, skipped_records, stage_batches
from mmpretrain.pixels import signed_psnr, to_signed
from mmpretrain.stages.loop import REPRESENTATION_DIR, data_rows, train_model, write_summary
from mmpretrain.tokenizers import vae as vae_lib


def vae_config(config) -> vae_lib.VAEConfig:
  v = config.vae
  return vae_lib.VAEConfig(in_channels=config.data.image_channels,
                           latent_channels=v.latent_channels,
                           block_out_channels=tuple(v.block_out_channels),
                           layers_per_block=v.layers_per_block, norm_num_groups=v.norm_num_groups,
                           mid_attention=v.mid_attention)


def make_vae_loss(kl_weight: float):
  def vae_loss(model: vae_lib.AutoencoderKL, batch, rng):
    """L1 of the decoded posterior sample + kl_weight · KL(q(z|x) ‖ N(0, I)) per image."""
    x = to_signed(batch["images"])
    mean, logvar = model.moments(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    reconstruction = model.decode_raw(z)
    l1 = jnp.mean(jnp.abs(reconstruction - x))
    kl = 0.5 * jnp.mean(jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
    return l1 + kl_weight * kl, {"l1": l1, "kl": kl,
                                 "psnr": jnp.mean(signed_psnr(reconstruction, x))}
  return vae_loss


def latent_std(model: vae_lib.AutoencoderKL, batches, num_batches: int) -> float:
  """Standard deviation of the posterior means over `num_batches` (float64)."""
  moments = nnx.jit(lambda m, frames: m.moments(to_signed(frames))[0])
  values = np.concatenate([np.asarray(moments(model, next(batches)["images"]),
                                      np.float64).ravel() for _ in range(num_batches)])
  return float(values.std())


def train_vae(config, workdir: str) -> dict:
  v = config.vae
  tok = pipeline.load_tokenizer(config)
  model = vae_lib.AutoencoderKL(vae_config(config), rngs=nnx.Rngs(config.seed))
  batches = stage_batches(config, tok, v.datasets, caption_len=1, rows=data_rows(config))
  trained = train_model(config, workdir, model, make_vae_loss(v.kl_weight), batches, name="vae")
  if trained.preempted:
    return trained.summary()
  # Over the stream's first stats_batches global batches: every process measures the same.
  every_row = stage_batches(config, tok, v.datasets, caption_len=1)
  model.cfg = dataclasses.replace(
      model.cfg, scaling_factor=1.0 / latent_std(model, every_row, v.stats_batches))
  held_out = image_batches(config, tok, v.datasets, split="validation",
                           batch_size=config.data.batch_size, caption_len=1, seed=0)
  reconstruct = nnx.jit(lambda m, frames: m.decode_raw(m.moments(to_signed(frames))[0]))
  scores = [np.asarray(signed_psnr(reconstruct(model, frames), to_signed(frames)))
            for frames in (next(held_out)["images"] for _ in range(4))]
  directory = storage.join(workdir, REPRESENTATION_DIR)
  vae_lib.save_vae(directory, model)
  grid = config.data.image_size // model.cfg.downsample
  summary = {**trained.summary(), "representation": directory,
             "latent_grid": [grid, grid, v.latent_channels],
             "scaling_factor": model.cfg.scaling_factor,
             "validation_psnr": float(np.mean(np.concatenate(scores))),
             "skipped_records": skipped_records(batches)}
  return write_summary(workdir, summary)
