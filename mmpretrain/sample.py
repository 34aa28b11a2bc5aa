"""Image generation from captions with the unified model (Transfusion sampling, no KV cache).

Each caption becomes the document `<bos> caption <boi> [image slots]`; its unconditional
twin drops the caption. The image lives in frame-token space and both rows read it through
their own `frame_slot`, so the two layouts can differ. Euler steps with CFG run in one jit.
"""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mmpretrain import diffusion, sharding
from mmpretrain.data.documents import generation_document
from mmpretrain.data.packing import RowBuilder
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.tokenizers.visual import patch_dim, unpatchify
from mmpretrain.train.objective import collect_frame_tokens, place_frame_tokens


def generation_rows(tok, captions: list[str], spec) -> dict:
  """One row per caption followed by one unconditional row per caption."""
  blank = np.zeros(spec.frame_shape, np.uint8)
  specials = dict(bos=tok.bos_id, eos=tok.eos_id, boi=tok.boi_id, eoi=tok.eoi_id)
  rows = []
  for caption_ids in [tok.encode(c) for c in captions] + [[]] * len(captions):
    builder = RowBuilder(spec)
    doc = generation_document(caption_ids, blank, **specials)
    if not builder.fits(doc):
      raise ValueError(f"caption of {len(caption_ids)} tokens plus an image does not fit "
                       f"data.seq_len={spec.seq_len}")
    builder.add(doc)
    rows.append(builder.row)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_image_sampler(trainer, spec):
  """Returns sample(params, rows, rng) -> uint8 images [N, H, W, C], jitted, replicated
  over the trainer's mesh so every process can read them."""
  cfg = trainer.config
  rep, p = trainer.representation, cfg.visual.patch_size
  num_frame_tokens = spec.max_frames * spec.tokens_per_frame
  times = diffusion.sampling_times(cfg.diffusion.sample_steps, trainer.time_shift)

  def sample(params, rows, rng, frozen):
    n = rows["tokens"].shape[0] // 2
    generated = rows["visual_loss_mask"]
    z1 = jax.random.normal(rng, (n, num_frame_tokens, patch_dim(rep.latent_grid, p)),
                           jnp.float32)

    def velocity(z, t):
      both = jnp.concatenate([z, z])
      z_seq = place_frame_tokens(both, rows["frame_slot"])
      t_seq = jnp.where(generated, t, 0.0)
      inputs = ModelInputs(tokens=rows["tokens"], modality=rows["modality"],
                           segment_ids=rows["segment_ids"], block_ids=rows["block_ids"],
                           positions=rows["positions"], visual_latents=z_seq, timesteps=t_seq)
      _, pred, _ = trainer.model(params)(inputs)  # merged per call: NNX graphs can't cross scan
      v_seq = diffusion.velocity(pred, z_seq, t_seq, cfg.diffusion.prediction, cfg.diffusion.min_t)
      v = collect_frame_tokens(v_seq, rows["frame_slot"], num_frame_tokens)
      return diffusion.classifier_free_guidance(v[:n], v[n:], cfg.diffusion.cfg_scale)

    z0 = diffusion.euler_sample(velocity, z1, times)
    frame0 = z0[:, :spec.tokens_per_frame]
    return rep.decode(frozen, unpatchify(frame0, p, rep.latent_grid))

  if trainer.mesh is None:
    jitted = jax.jit(sample)
  else:
    jitted = jax.jit(sample, out_shardings=sharding.replicated(trainer.mesh))
  return lambda params, rows, rng: jitted(params, rows, rng, trainer.frozen)


def image_grid(images: np.ndarray, columns: int, scale: int = 2) -> Image.Image:
  """uint8 [N, H, W, C] -> one PIL image, `columns` wide, upscaled for viewing."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.zeros((rows * h, columns * w, c), np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
  pil = Image.fromarray(grid.squeeze(-1) if c == 1 else grid)
  return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
