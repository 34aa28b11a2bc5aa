"""Sampling from the unified model: images from captions (Transfusion sampling) and text
continuation with a KV cache (greedy, temperature, top-p).

Each caption becomes the document `<bos> caption <boi> [image slots]`; its unconditional
twin drops the caption. The image lives in frame-token space and both rows read it through
their own `frame_slot`, so the two layouts can differ. Euler or Heun steps with CFG run in
one jit.
"""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mmpretrain import diffusion, sharding
from mmpretrain.data.documents import generation_document, text_segment, understanding_document
from mmpretrain.data.packing import RowBuilder
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.batch import MODALITY_TEXT
from mmpretrain.tokenizers.visual import patch_dim, unpatchify
from mmpretrain.train.objective import (collect_frame_tokens, frame_latent_tokens,
                                       place_frame_tokens)


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

    z0 = diffusion.SAMPLERS[cfg.diffusion.sampler](velocity, z1, times)
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


def top_p_filter(logits, top_p: float):
  """Logits outside the smallest set of tokens whose probability reaches top_p -> -inf
  (nucleus sampling; the most likely token always stays)."""
  ordered = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(ordered, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs          # probability of the tokens above
  kept = jnp.sum(before < top_p, axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def next_token(logits, rng, temperature: float, top_p: float):
  """Greedy at temperature 0; otherwise a draw from softmax(logits / T) within top_p."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  return jax.random.categorical(rng, top_p_filter(logits / temperature, top_p), axis=-1)


def text_inputs(tokens, positions, segment_ids, patch_dim: int) -> ModelInputs:
  """Text-only model inputs (no visual slots) for tokens [B, T]."""
  zeros = jnp.zeros(tokens.shape, jnp.float32)
  return ModelInputs(tokens=tokens, modality=jnp.where(segment_ids > 0, MODALITY_TEXT, 0),
                     segment_ids=segment_ids, block_ids=jnp.zeros_like(tokens),
                     positions=positions, visual_latents=jnp.zeros((*tokens.shape, patch_dim)),
                     timesteps=zeros)


def make_generator(trainer, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0):
  """Returns jitted generate(params, prompt, rng) -> new tokens [B, N]: `prompt` (a dict of
  ModelInputs fields [B, P], all rows ending at slot P − 1: text, or text around clean
  visual blocks) runs once into a KV cache, then text follows one token per step, each
  reading the cache (tests/test_decode.py: equal to recomputing the whole sequence)."""
  patch = patch_dim(trainer.representation.latent_grid, trainer.config.visual.patch_size)

  def generate(params, prompt, rng):
    inputs = ModelInputs(**prompt)
    batch, prompt_len = inputs.tokens.shape
    model = trainer.model(params)
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    logits, _, cache = model.decode(inputs, cache, 0)
    first = next_token(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_p)
    last_position, segment = inputs.positions[:, -1:], inputs.segment_ids[:, -1:]

    def step(carry, i):
      token, cache = carry
      logits, _, cache = trainer.model(params).decode(   # merged per step: NNX graphs can't
          text_inputs(token[:, None], last_position + 1 + i, segment, patch),  # cross scan
          cache, prompt_len + i)
      following = next_token(logits[:, -1], jax.random.fold_in(rng, i + 1), temperature, top_p)
      return (following, cache), token

    _, generated = jax.lax.scan(step, (first, cache), jnp.arange(max_new_tokens))
    return generated.T

  return jax.jit(generate)


def text_prompt(trainer, prompts: list[list[int]]) -> dict:
  """Token prompts as a generator prompt: right-aligned (padding first, segment id 0) so
  every row continues at the same cache slot, positions counted from each row's start."""
  width = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), width), np.int32)
  segments = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
    segments[row, width - len(prompt):] = 1
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
  patch = patch_dim(trainer.representation.latent_grid, trainer.config.visual.patch_size)
  return vars(text_inputs(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments),
                          patch))


def caption_prompt(trainer, tok, frames: np.ndarray, spec) -> dict:
  """`<bos> <boi> [clean image] <eoi>` per frame (uint8 [B, H, W, C]): the understanding
  document up to its caption, as a generator prompt."""
  specials = dict(bos=tok.bos_id, eos=tok.eos_id, boi=tok.boi_id, eoi=tok.eoi_id)
  rows = []
  for frame in frames:
    builder = RowBuilder(spec)
    document = understanding_document([], frame, **specials)[:-1] + [
        text_segment([tok.eoi_id], False)]
    builder.add(document)
    rows.append(builder.row)
  rows = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  used = int((rows["segment_ids"][0] > 0).sum())
  latents = collect_latents(trainer, rows)
  return {"tokens": jnp.asarray(rows["tokens"][:, :used]),
          "modality": jnp.asarray(rows["modality"][:, :used]),
          "segment_ids": jnp.asarray(rows["segment_ids"][:, :used]),
          "block_ids": jnp.asarray(rows["block_ids"][:, :used]),
          "positions": jnp.asarray(rows["positions"][:, :used]),
          "visual_latents": latents[:, :used],
          "timesteps": jnp.zeros((len(frames), used), jnp.float32)}


def collect_latents(trainer, rows) -> jnp.ndarray:
  """The rows' frames encoded by the representation, placed at their slots [B, L, patch]."""
  tokens = frame_latent_tokens(trainer.representation, trainer.frozen,
                               jnp.asarray(rows["frames"]), trainer.config.visual.patch_size)
  return place_frame_tokens(tokens, jnp.asarray(rows["frame_slot"]))
