"""The unified Transfusion transformer: one decoder over text tokens and visual latents.

Text positions embed token ids and are read out by the LM head (next-token prediction);
visual positions embed noisy latent patches plus a timestep embedding and are read out by
a linear flow head (x- or v-prediction). Which is which comes from `modality`.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain.batch import MODALITY_VISUAL
from mmpretrain.model import layers
from mmpretrain.model.masks import attention_mask

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """What the transformer reads for one packed batch (all [B, L] but visual_latents)."""
  tokens: jnp.ndarray
  modality: jnp.ndarray
  segment_ids: jnp.ndarray
  block_ids: jnp.ndarray
  positions: jnp.ndarray
  visual_latents: jnp.ndarray   # [B, L, patch_dim] noisy latent patch at visual slots
  timesteps: jnp.ndarray        # [B, L] flow time of each visual slot (0 = clean)


class DecoderBlock(nnx.Module):
  """Pre-norm block: x + attn(norm(x)); x + ffn(norm(x)), with optional modality FFNs."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.attn_norm = layers.RMSNorm(cfg.d_model, cfg.norm_eps, dtype)
    self.attn = layers.Attention(cfg, rngs=rngs)
    self.ffn_norm = layers.RMSNorm(cfg.d_model, cfg.norm_eps, dtype)
    self.ffn = layers.SwiGLU(cfg, rngs=rngs)
    # The paper's improved dense baseline: visual tokens use their own FFN weights.
    self.vision_ffn = layers.SwiGLU(cfg, rngs=rngs) if cfg.modality_ffn else None

  def __call__(self, x, positions, mask, is_visual):
    x = x + self.attn(self.attn_norm(x), positions, mask)
    h = self.ffn_norm(x)
    if self.vision_ffn is None:
      return x + self.ffn(h)
    # Both FFNs run on every token and the result is selected: simple and exact; an
    # ablation-only cost (2× FFN FLOPs) that MoE dispatch replaces at scale.
    return x + jnp.where(is_visual[..., None], self.vision_ffn(h), self.ffn(h))


def timestep_features(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
  """Sinusoidal features of flow time t ∈ [0, 1] (scaled ×1000 like DiT timesteps)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (1000.0 * t.astype(jnp.float32))[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedding(nnx.Module):
  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.freq_dim = 256
    init = layers.dense_init(cfg.init_std, (None, "embed"))
    self.fc1 = nnx.Linear(self.freq_dim, cfg.d_model, kernel_init=init, rngs=rngs)
    init = layers.dense_init(cfg.init_std, ("embed", "embed_out"))
    self.fc2 = nnx.Linear(cfg.d_model, cfg.d_model, kernel_init=init, rngs=rngs)

  def __call__(self, t):
    return self.fc2(jax.nn.silu(self.fc1(timestep_features(t, self.freq_dim))))


class DecoderStack(nnx.Module):
  """num_layers DecoderBlocks, either stacked for nnx.scan or kept as a list."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.scan_layers = cfg.scan_layers
    self.remat_policy = REMAT_POLICIES.get(cfg.remat)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_blocks(rngs):
        return DecoderBlock(cfg, rngs=rngs)
      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

  def __call__(self, x, positions, mask, is_visual):
    def apply_block(block, x):
      return block(x, positions, mask, is_visual)
    if not self.scan_layers:
      remat_block = apply_block if self.remat_policy is None else nnx.remat(
          apply_block, policy=self.remat_policy)
      for block in self.blocks:
        x = remat_block(block, x)
      return x

    # A plain lax.scan over the stacked block state (rather than nnx.scan) keeps the stack
    # usable from inside other traced loops, e.g. the sampler's ODE scan.
    graphdef, stacked = nnx.split(self.blocks)

    def scan_body(x, block_state):
      return apply_block(nnx.merge(graphdef, block_state), x), None
    if self.remat_policy is not None:
      scan_body = jax.checkpoint(scan_body, policy=self.remat_policy)
    x, _ = jax.lax.scan(scan_body, x, stacked)
    return x


class Transfusion(nnx.Module):
  """Decoder-only transformer trained with next-token CE on text and flow matching on vision."""

  def __init__(self, cfg, patch_dim: int, *, rngs: nnx.Rngs):
    self.cfg, self.dtype = cfg, jnp.dtype(cfg.dtype)
    d, std = cfg.d_model, cfg.init_std
    self.embed = nnx.Embed(cfg.vocab_size, d, dtype=self.dtype, rngs=rngs,
                           embedding_init=layers.dense_init(std, ("vocab", "embed")))
    self.visual_in = layers.linear(patch_dim, d, dtype=self.dtype, std=std,
                                   axes=("latent", "embed"), use_bias=True, rngs=rngs)
    self.time_embed = TimestepEmbedding(cfg, rngs=rngs)
    self.decoder = DecoderStack(cfg, rngs=rngs)
    self.final_norm = layers.RMSNorm(d, cfg.norm_eps, self.dtype)
    self.lm_head = None if cfg.tie_embeddings else layers.linear(
        d, cfg.vocab_size, dtype=self.dtype, std=std, axes=("embed", "vocab"), rngs=rngs)
    self.visual_out = layers.linear(d, patch_dim, dtype=self.dtype, std=std,
                                    axes=("embed", "latent"), use_bias=True, rngs=rngs)

  def __call__(self, inputs: ModelInputs):
    """Returns (text logits [B, L, V] float32, visual prediction [B, L, patch_dim] float32)."""
    # The decoder works on flat tokens [B·L, d]; only attention sees [B, L, ...]. Weight
    # gradients then contract over one axis, which XLA:CPU runs ~2× faster than over two.
    batch, length = inputs.tokens.shape
    def flat(t):
      return t.reshape(batch * length, *t.shape[2:])
    is_visual = flat(inputs.modality == MODALITY_VISUAL)
    text_h = self.embed(flat(inputs.tokens))
    visual_h = (self.visual_in(flat(inputs.visual_latents).astype(self.dtype))
                + self.time_embed(flat(inputs.timesteps)).astype(self.dtype))
    x = jnp.where(is_visual[..., None], visual_h, text_h)
    mask = attention_mask(inputs.segment_ids, inputs.block_ids)
    x = self.final_norm(self.decoder(x, inputs.positions, mask, is_visual))
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    def unflat(t):
      return t.reshape(batch, length, *t.shape[1:]).astype(jnp.float32)
    return unflat(logits), unflat(self.visual_out(x))
