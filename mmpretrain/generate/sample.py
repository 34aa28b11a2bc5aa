"""Sampling from the unified model, all through one KV cache.

Text continues one token per step against the cache (greedy, temperature, top-p). A
visual block is generated the Transfusion way: the document up to its `<boi>` is written
into the cache once, then every Euler/Heun step runs only the block's tokens against it
(conditional and unconditional rows batched for CFG), so N denoising steps cost one
prefix pass plus N block passes. Images from captions, captions of images and world-model
rollouts (generate/world_model.py) are built from these two pieces.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from mmpretrain import diffusion, image_files, sharding
from mmpretrain.batch import MODALITY_TEXT
from mmpretrain.data.documents import (document_frames, document_length, fit_frame,
                                       generation_document, text_segment,
                                       understanding_document)
from mmpretrain.data.packing import RowBuilder
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.tokenizers.text import special_ids
from mmpretrain.tokenizers.visual import patch_dim, place_frame_tokens, unpatchify

ID_FIELDS = ("tokens", "modality", "segment_ids", "block_ids", "positions")


def document_rows(documents: list, spec) -> dict:
  """One packed row per document (numpy, [B, ...])."""
  rows = []
  for doc in documents:
    builder = RowBuilder(spec)
    if not builder.fits(doc):
      raise ValueError(
          f"a prompt document of {document_length(doc, spec.tokens_per_frame)} tokens and "
          f"{document_frames(doc)} frames does not fit data.seq_len={spec.seq_len} and "
          f"data.max_frames={spec.max_frames}: raise them or shorten the prompt")
    builder.add(doc)
    rows.append(builder.row)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@dataclasses.dataclass(frozen=True)
class BlockPrompt:
  """Documents cut before their first generated frame.

  `prefix` [B, P]: ID_FIELDS and frame_slot, right-aligned (padding first, segment id 0)
  so every row's block starts at cache slot P; its frame_slot indexes `frames`, the
  documents' context frames (uint8 [B, F, H, W, C]). `block` [B, T]: the ID_FIELDS of
  the frame to generate.
  """
  prefix: dict
  block: dict
  frames: np.ndarray


def right_aligned(rows: dict, ends) -> dict:
  """ID_FIELDS and frame_slot of each row's first `ends[i]` slots, right-aligned (padding
  first, segment id 0), so that every row continues at the same cache slot."""
  width = int(max(ends))
  aligned = {k: np.zeros((len(ends), width), rows[k].dtype) for k in ID_FIELDS}
  aligned["frame_slot"] = np.full((len(ends), width), -1, np.int32)
  for i, end in enumerate(ends):
    for k in aligned:
      aligned[k][i, width - end:] = rows[k][i, :end]
  return aligned


def block_prompt(documents: list, spec) -> BlockPrompt:
  rows = document_rows(documents, spec)
  generated = rows["visual_loss_mask"]
  if not generated.any(axis=1).all():
    raise ValueError("every prompt document needs a generated visual segment")
  starts = np.argmax(generated, axis=1)
  length = spec.tokens_per_frame
  block = {k: np.stack([rows[k][i, s:s + length] for i, s in enumerate(starts)])
           for k in ID_FIELDS}
  return BlockPrompt(right_aligned(rows, starts), block, rows["frames"])


def block_velocity(run, params, cache, block: dict, index, z, t, guided: bool):
  """The ODE velocity of a visual block's latent tokens z [n, T, D] at time t: one model
  call on the block (ID_FIELDS [rows, T]) at cache slots index..index+T-1 reading the
  cache (never writing it) — one denoising step. Guided: rows = 2n, the second half
  unconditional twins, mixed by config.diffusion.cfg_scale."""
  cfg = run.config.diffusion
  rows, length = block["tokens"].shape
  n = z.shape[0]
  both = jnp.concatenate([z, z]) if guided else z
  t_block = jnp.full((rows, length), t)
  inputs = ModelInputs(**{k: block[k] for k in ID_FIELDS}, visual_latents=both,
                       timesteps=t_block)
  # merged per call: NNX graphs can't cross the sampler's scan
  _, raw, _ = run.model(params).decode(inputs, cache, index)
  prediction = diffusion.head_prediction(raw, both, t_block, cfg)
  v = diffusion.velocity(prediction, both, t_block, cfg.prediction, cfg.min_t)
  return diffusion.classifier_free_guidance(v[:n], v[n:], cfg.cfg_scale) if guided else v


def denoise_block(run, params, cache, block: dict, index, z1, guided: bool):
  """Integrates the flow of a visual block from noise z1 [n, T, D] to clean latent
  tokens, every step a block_velocity call."""
  def velocity(z, t):
    return block_velocity(run, params, cache, block, index, z, t, guided)
  cfg = run.config.diffusion
  times = diffusion.sampling_times(cfg.sample_steps, run.time_shift)
  return diffusion.SAMPLERS[cfg.sampler](velocity, z1, times)


def gathered_params(run, params):
  """params as the samplers hold them through their loops: each weight gathered over the
  batch axes once (run.sampling_param_sharding), not again for every tiny step."""
  if run.mesh is None:
    return params
  return jax.lax.with_sharding_constraint(params, run.sampling_param_sharding)


def replicated_jit(run, fn):
  """jax.jit with outputs replicated over the run's mesh (every process reads them)."""
  if run.mesh is None:
    return jax.jit(fn)
  return jax.jit(fn, out_shardings=sharding.replicated(run.mesh))


def sample_blocks(run, params, prefix, block, context, rng, guided: bool,
                  count: int | None = None):
  """The clean latent tokens [n, T, D] of every prompt's block (traced inside a sampler's
  jit): the prefix written into a fresh cache, then the block denoised against it.

  `context` [rows, F·T, D] are the latent tokens of the prompt's frames. Guided: the first
  n = rows/2 rows are conditional and the others their unconditional twins; otherwise
  n = rows. Noise is drawn for the first `count` of the n rows (default: all) and is zero
  for the rest, rows that only pad a batch, so a row's draw does not depend on them.
  """
  rows, width = prefix["tokens"].shape
  length = block["tokens"].shape[1]
  params = gathered_params(run, params)
  model = run.model(params)
  cache = model.init_cache(rows, width + length)
  _, _, cache = model.decode(ModelInputs(
      **{k: prefix[k] for k in ID_FIELDS},
      visual_latents=place_frame_tokens(context, prefix["frame_slot"]),
      timesteps=jnp.zeros((rows, width), jnp.float32)), cache, 0)
  n = rows // 2 if guided else rows
  z1 = jax.random.normal(rng, (n if count is None else count, length, context.shape[-1]),
                         jnp.float32)
  z1 = jnp.pad(z1, ((0, n - z1.shape[0]), (0, 0), (0, 0)))
  return denoise_block(run, params, cache, block, width, z1, guided)


def make_block_sampler(run, guided: bool):
  """Returns jitted sample(params, prompt, context, rng) -> the clean latent tokens
  [n, T, D] of every prompt's block (sample_blocks), on every process."""
  def sample(params, prefix, block, context, rng):
    return sample_blocks(run, params, prefix, block, context, rng, guided)

  jitted = replicated_jit(run, sample)
  return lambda params, prompt, context, rng: jitted(params, prompt.prefix, prompt.block,
                                                     context, rng)


def make_frame_decoder(run):
  """Returns jitted decode(tokens [..., T, D]) -> uint8 frames [..., H, W, C]."""
  rep, p = run.representation, run.config.visual.patch_size
  decode = jax.jit(lambda frozen, tokens: rep.decode(frozen, unpatchify(tokens, p,
                                                                        rep.latent_grid)))
  return lambda tokens: decode(run.frozen, tokens)


def caption_documents(tok, captions: list[str], spec) -> list:
  """`<bos> caption <boi> [image]` per caption, then the unconditional `<bos> <boi> [image]`
  twin of each (what caption dropout trained): a guided BlockPrompt's documents."""
  blank = np.zeros(spec.frame_shape, np.uint8)
  specials = special_ids(tok)
  ids = [tok.encode(c) for c in captions]
  return [generation_document(c, blank, **specials) for c in ids + [[]] * len(ids)]


@dataclasses.dataclass(frozen=True)
class Drawn:
  """Images drawn on a run's devices: `images` uint8 [rows, H, W, C] where the sampler
  left them (on a mesh, split over the batch axes), of which the first `count` were asked
  for; the others pad the rows to a multiple of the axes' ways."""
  images: jax.Array
  count: int

  def rows_of(self, process: int) -> list[int]:
    """The asked-for rows that the devices of `process` hold."""
    total = self.images.shape[0]
    held = set()
    for device, index in self.images.sharding.devices_indices_map(self.images.shape).items():
      if device.process_index == process:
        held.update(range(*index[0].indices(total)))
    return sorted(row for row in held if row < self.count)

  def local(self) -> dict[int, np.ndarray]:
    """This process's asked-for rows, by row: what it writes."""
    total, held = self.images.shape[0], {}
    for shard in self.images.addressable_shards:
      start = shard.index[0].indices(total)[0]
      for offset, image in enumerate(np.asarray(shard.data)):
        if start + offset < self.count:
          held[start + offset] = image
    return held

  def gathered(self) -> np.ndarray:
    """Every asked-for row, on every process (numpy [count, H, W, C])."""
    return np.asarray(multihost_utils.process_allgather(self.images, tiled=True))[:self.count]


def row_ways(run) -> int:
  """How many ways the run's mesh splits a sampler's rows (1 without a mesh)."""
  return 1 if run.mesh is None else sharding.batch_ways(run.mesh, run.config.mesh.rules)


class ImageSampler:
  """sampler(params, captions, rng) -> uint8 images [N, H, W, C] on every process, one per
  caption, drawn with CFG (config.diffusion) through the KV cache; `draw` returns them
  where they were drawn (Drawn). On a mesh the guided rows are split over the batch axes
  like a training batch, the captions padded with blank ones to a multiple of their ways,
  and the weights gathered once over those axes (gathered_params)."""

  def __init__(self, run, tok):
    self.run, self.tok, self.ways = run, tok, row_ways(run)
    rep, patch = run.representation, run.config.visual.patch_size
    dim = patch_dim(rep.latent_grid, patch)

    def draw(params, prefix, block, frozen, rng, count):
      no_frames = jnp.zeros((prefix["tokens"].shape[0], 1, dim), jnp.float32)
      latents = sample_blocks(run, params, prefix, block, no_frames, rng, True, count)
      return rep.decode(frozen, unpatchify(latents, patch, rep.latent_grid))

    if run.mesh is None:
      self.rows = None
      self._draw = jax.jit(draw, static_argnames="count")
    else:
      self.rows = sharding.batch_sharding(run.mesh, run.config.mesh.rules)
      self._draw = jax.jit(draw, static_argnames="count", out_shardings=self.rows)

  def draw(self, params, captions: list[str], rng) -> Drawn:
    spec, count = self.run.spec, len(captions)
    padded = list(captions) + [""] * (-count % self.ways)
    prompt = block_prompt(caption_documents(self.tok, padded, spec), spec)
    place = (lambda rows: rows) if self.rows is None else (
        lambda rows: jax.device_put(rows, self.rows))     # every process holds them all
    return Drawn(self._draw(params, place(prompt.prefix), place(prompt.block),
                            self.run.frozen, rng, count=count), count)

  def __call__(self, params, captions: list[str], rng) -> np.ndarray:
    return self.draw(params, captions, rng).gathered()


def make_image_sampler(run, tok) -> ImageSampler:
  return ImageSampler(run, tok)


def image_grid(images: np.ndarray, columns: int, scale: int = 2) -> Image.Image:
  """uint8 [N, H, W, C] -> one PIL image, `columns` wide, upscaled for viewing."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.zeros((rows * h, columns * w, c), np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
  pil = image_files.to_pil(grid)
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


def make_generator(run, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0):
  """Returns jitted generate(params, prompt, rng) -> new tokens [B, N]: `prompt` (a dict of
  ModelInputs fields [B, P], all rows ending at slot P − 1: text, or text around clean
  visual blocks) runs once into a KV cache, then text follows one token per step, each
  reading the cache (tests/test_decode.py: equal to recomputing the whole sequence)."""
  patch = patch_dim(run.representation.latent_grid, run.config.visual.patch_size)

  def generate(params, prompt, rng):
    params = gathered_params(run, params)
    inputs = ModelInputs(**prompt)
    batch, prompt_len = inputs.tokens.shape
    model = run.model(params)
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    logits, _, cache = model.decode(inputs, cache, 0)
    first = next_token(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_p)
    last_position, segment = inputs.positions[:, -1:], inputs.segment_ids[:, -1:]

    def step(carry, i):
      token, cache = carry
      logits, _, cache = run.model(params).decode(   # merged per step: NNX graphs can't
          text_inputs(token[:, None], last_position + 1 + i, segment, patch),  # cross scan
          cache, prompt_len + i)
      following = next_token(logits[:, -1], jax.random.fold_in(rng, i + 1), temperature, top_p)
      return (following, cache), token

    _, generated = jax.lax.scan(step, (first, cache), jnp.arange(max_new_tokens))
    return generated.T

  return replicated_jit(run, generate)


def text_prompt(run, prompts: list[list[int]]) -> dict:
  """Token prompts as a generator prompt: right-aligned (padding first, segment id 0) so
  every row continues at the same cache slot, positions counted from each row's start."""
  width = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), width), np.int32)
  segments = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
    segments[row, width - len(prompt):] = 1
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
  patch = patch_dim(run.representation.latent_grid, run.config.visual.patch_size)
  return vars(text_inputs(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments),
                          patch))


def understanding_prompt(run, tok, frames: np.ndarray, texts=None) -> dict:
  """`<bos> <boi> [clean image] <eoi> text` per frame (uint8 [B, H, W, C]) and text ids
  (`texts`, e.g. a question; none: a caption follows the image), right-aligned, as a
  generator prompt."""
  specials = special_ids(tok)
  texts = [[]] * len(frames) if texts is None else texts
  rows = document_rows([understanding_document([], frame, **specials)[:-1]
                        + [text_segment([tok.eoi_id] + list(text), False)]
                        for frame, text in zip(frames, texts)], run.spec)
  prompt = right_aligned(rows, (rows["segment_ids"] > 0).sum(axis=1))
  latents = place_frame_tokens(run.latent_tokens(rows["frames"]),
                               jnp.asarray(prompt["frame_slot"]))
  return {**{k: jnp.asarray(prompt[k]) for k in ID_FIELDS}, "visual_latents": latents,
          "timesteps": jnp.zeros(prompt["tokens"].shape, jnp.float32)}


def decode_generated(tok, ids, after=()) -> str:
  """Generated ids -> text, cut at the first <eos>. `after`: the text ids the generation
  continues; SentencePiece drops a leading space from ids decoded alone, so the
  continuation is read off the decoding of both together."""
  ids = [int(i) for i in ids]
  ids = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
  after = [int(i) for i in after]
  if not after:
    return tok.decode(ids)
  before, both = tok.decode(after), tok.decode(after + ids)
  return both[len(before):] if both.startswith(before) else tok.decode(ids)


def continue_texts(run, tok, params, texts: list[str], max_new_tokens: int,
                   temperature: float, top_p: float, seed: int) -> list[str]:
  """Each text followed by its continuation."""
  prompts = [[tok.bos_id] + tok.encode(t) for t in texts]
  generate = make_generator(run, max_new_tokens, temperature, top_p)
  generated = jax.device_get(generate(params, text_prompt(run, prompts),
                                      jax.random.key(seed)))
  return [text + decode_generated(tok, ids, after=prompt[1:])
          for text, prompt, ids in zip(texts, prompts, generated)]


def caption_files(run, tok, params, paths: list[str], max_new_tokens: int) -> list[str]:
  """Greedy captions of image files (fitted to the model's frame size like training data)."""
  spec = run.spec
  size, _, channels = spec.frame_shape
  frames = []
  for path in paths:
    with Image.open(path) as image:
      frames.append(fit_frame(np.asarray(image.convert("L" if channels == 1 else "RGB"))
                              .reshape(image.height, image.width, channels), size, channels))
  prompt = understanding_prompt(run, tok, np.stack(frames))
  generated = jax.device_get(make_generator(run, max_new_tokens)(params, prompt,
                                                                    jax.random.key(0)))
  return [decode_generated(tok, ids) for ids in generated]


def draw_captions(run, tok, params, captions: list[str], per_caption: int, seed: int) -> Drawn:
  """`per_caption` images for each caption, caption by caption."""
  repeated = [c for c in captions for _ in range(per_caption)]
  return ImageSampler(run, tok).draw(params, repeated, jax.random.key(seed))


def local_grid(drawn: Drawn, columns: int) -> Image.Image | None:
  """The grid of the drawn images (`columns` a row) as far as this process holds them: the
  grid's rows its images fall in, other cells black (on one process, the whole grid);
  None where it holds none."""
  held = drawn.local()
  if not held:
    return None
  first = min(held) // columns
  last = max(held) // columns
  images = np.zeros(((last - first + 1) * columns, *next(iter(held.values())).shape),
                    np.uint8)
  for row, image in held.items():
    images[row - first * columns] = image
  return image_grid(images, columns)
