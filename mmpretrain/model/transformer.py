"""The unified Transfusion transformer: one decoder over text tokens and visual latents.

Text positions embed token ids and are read out by the LM head (next-token prediction);
visual positions embed noisy latent patches plus a timestep embedding and are read out by
the flow head (model/flow_head.py: linear, or a wide shallow network). Which is which
comes from `modality`.
"""
import dataclasses
import itertools
import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain import sharding
from mmpretrain.config_rules import REMAT_POLICIES
from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL, TOKEN_KINDS, is_visual
from mmpretrain.model import chunked_attention, layers, modality_ffn, mot
from mmpretrain.model.flow_head import FlowHead
from mmpretrain.model.masks import cached_attention_mask, key_ranges
from mmpretrain.model.moe import DISPATCH_INDICES, EXPERT_HIDDEN, MoE, RouterBias

def remat_policy(name: str, keep: tuple[str, ...] = ()):
  """The jax.checkpoint policy `model.remat` names, or None for no rematerialisation;
  `keep`: names of checkpoint_name'd intermediates it also saves."""
  policy = REMAT_POLICIES[name]
  if policy is None:
    return None
  policy = getattr(jax.checkpoint_policies, policy)
  if keep:
    policy = jax.checkpoint_policies.save_from_both_policies(
        policy, jax.checkpoint_policies.save_only_these_names(*keep))
  return policy


def model_remat_policy(cfg):
  """model.remat's policy, keeping the chunked attention's residuals and the routed
  experts' hidden activations where model.remat_keep_attention and
  model.moe.remat_keep_hidden ask, the grouped modality FFNs' matmul outputs where it
  keeps other matmuls' outputs, and always the MoE dispatch's slot indices (a few MB a
  layer, whose sorts the backward would otherwise run again)."""
  keep = (DISPATCH_INDICES,) if cfg.moe.num_experts else ()
  if cfg.moe.num_experts and cfg.moe.remat_keep_hidden:
    keep += (EXPERT_HIDDEN,)
  if cfg.remat in ("dots", "dots_no_batch"):
    keep += (modality_ffn.GROUPED_HIDDEN,)
  if cfg.remat_keep_attention:
    keep += (chunked_attention.RESIDUALS,)
  return remat_policy(cfg.remat, keep)


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
  # [B, L] bool: visual slots being generated, for routing statistics. None: those with
  # t > 0 (training passes it because context frames may carry a little noise too).
  generated: jnp.ndarray | None = None


def flat(t):
  """[B, L, ...] -> [B·L, ...]: the layout the decoder's token-wise layers work in."""
  return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def index_in_block(positions, block_ids):
  """[B, L] -> each token's index within its visual block (its position minus the block's
  first position; a block fills consecutive slots and is never split across chunks).

  The block's first slot is a running maximum over the slots where a block starts: a
  gather, not a scatter (TPU scatters are slow, and XLA's cost model cannot time them)."""
  slots = jnp.arange(block_ids.shape[1])
  starts = jnp.concatenate([jnp.ones_like(block_ids[:, :1], bool),
                            block_ids[:, 1:] != block_ids[:, :-1]], axis=1)
  first_slot = jax.lax.cummax(jnp.where(starts, slots, 0), axis=1)
  first = jnp.take_along_axis(positions, first_slot, axis=1)
  return jnp.where(block_ids > 0, positions - first, 0)


def is_moe_layer(cfg, index: int) -> bool:
  """MoE FFN at layer `index`: after `first_dense_layers`, every `every_n_layers`-th layer."""
  moe = cfg.moe
  return (moe.num_experts > 0 and index >= moe.first_dense_layers
          and (index - moe.first_dense_layers) % moe.every_n_layers == 0)


def token_kinds(modality, generated):
  """TOKEN_KINDS index of every position: text, visual context, generated visual; -1 pad."""
  visual_kind = jnp.where(generated, TOKEN_KINDS.index("visual_generation"),
                          TOKEN_KINDS.index("visual_understanding"))
  return jnp.where(modality == MODALITY_TEXT, TOKEN_KINDS.index("text"),
                   jnp.where(modality == MODALITY_VISUAL, visual_kind, -1)).astype(jnp.int32)


class DecoderBlock(nnx.Module):
  """Pre-norm block: x + attn(norm(x)); x + ffn(norm(x)).

  The FFN is a SwiGLU, a pair of modality SwiGLUs (`modality_ffn`), or a MoE layer; with
  `mot`, the norms and attention projections are per modality too (`model/mot.py`).
  Returns (x, routing stats) — stats are empty for dense FFNs.
  """

  def __init__(self, cfg, *, moe: bool, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.mot = cfg.mot
    if cfg.mot:
      self.attn_norm = mot.ModalityNorm(cfg)
      self.attn = mot.ModalityAttention(cfg, rngs=rngs)
      self.ffn_norm = mot.ModalityNorm(cfg)
    else:
      self.attn_norm = layers.RMSNorm(cfg.d_model, cfg.norm_eps, dtype)
      self.attn = layers.Attention(cfg, rngs=rngs)
      self.ffn_norm = layers.RMSNorm(cfg.d_model, cfg.norm_eps, dtype)
    self.ffn = MoE(cfg, rngs=rngs) if moe else layers.SwiGLU(cfg, rngs=rngs)
    # The paper's improved dense baseline: visual tokens use their own FFN weights.
    twins = (cfg.modality_ffn or cfg.mot) and not moe
    self.vision_ffn = (layers.mark_used_by(layers.SwiGLU(cfg, rngs=rngs), layers.VISUAL)
                       if twins else None)
    if twins:
      layers.mark_used_by(self.ffn, layers.TEXT)
    self.modality_ffn_impl = cfg.modality_ffn_impl

  def _modality(self, token_kind) -> tuple:
    """The extra argument the MoT norms and attention take: each token's modality."""
    return (is_visual(token_kind),) if self.mot else ()

  def __call__(self, x, positions, mask, token_kind):
    modality = self._modality(token_kind)
    x = x + self.attn(self.attn_norm(x, *modality), positions, mask, *modality)
    return self._ffn(x, token_kind, rows=positions.shape[0])

  def decode(self, x, positions, mask, token_kind, cache, index):
    """The block on a chunk of new tokens with a KV cache (see Attention.decode)."""
    modality = self._modality(token_kind)
    attended, cache = self.attn.decode(self.attn_norm(x, *modality), positions, mask, cache,
                                       index, *modality)
    # A sampler's steps hold the weights whole and split their rows over the chips outside
    # any activation rules: sorting tokens by modality would gather them across chips.
    x, _ = self._ffn(x + attended, token_kind, rows=positions.shape[0],
                     modality_ffn_impl="select")
    return x, cache

  def _ffn(self, x, token_kind, rows: int, modality_ffn_impl: str | None = None):
    h = self.ffn_norm(x, *self._modality(token_kind))
    stats = {}
    if isinstance(self.ffn, MoE):
      out, stats = self.ffn(h, token_kind, rows=rows)
    elif self.vision_ffn is None:
      out = self.ffn(h)
    else:
      out = modality_ffn.apply(self.ffn, self.vision_ffn, h, is_visual(token_kind),
                               modality_ffn_impl or self.modality_ffn_impl)
    return sharding.constrain(x + out, ("batch", None)), stats


def timestep_features(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
  """Sinusoidal features of flow time t ∈ [0, 1] (scaled ×1000 like DiT timesteps)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (1000.0 * t.astype(jnp.float32))[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedding(nnx.Module):
  """Flow time t [T] -> [T, d] by an MLP on its sinusoidal features, in model.dtype."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.freq_dim = 256
    dtype = jnp.dtype(cfg.dtype)
    init = layers.dense_init(cfg.init_std, (None, "embed"))
    self.fc1 = nnx.Linear(self.freq_dim, cfg.d_model, kernel_init=init, dtype=dtype, rngs=rngs)
    init = layers.dense_init(cfg.init_std, ("embed", "embed_out"))
    self.fc2 = nnx.Linear(cfg.d_model, cfg.d_model, kernel_init=init, dtype=dtype, rngs=rngs)

  def __call__(self, t):
    # Kept on the chips holding each token's row: left to follow the fsdp-split weights,
    # XLA runs this MLP on the whole batch on every chip and all-reduces the result.
    by_token = lambda h: sharding.constrain(h, ("batch", None))
    hidden = by_token(jax.nn.silu(self.fc1(by_token(timestep_features(t, self.freq_dim)))))
    return by_token(self.fc2(hidden))


class LayerRun(nnx.Module):
  """Consecutive blocks of one kind (dense or MoE), stacked for a scan or kept as a list."""

  def __init__(self, cfg, count: int, moe: bool, *, rngs: nnx.Rngs):
    self.count, self.moe, self.scan_layers = count, moe, cfg.scan_layers
    self.remat_policy = model_remat_policy(cfg)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=count)
      @nnx.vmap(in_axes=0, out_axes=0,
                transform_metadata={nnx.PARTITION_NAME: layers.LAYER_AXIS})
      def make_blocks(rngs):
        return DecoderBlock(cfg, moe=moe, rngs=rngs)
      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([DecoderBlock(cfg, moe=moe, rngs=rngs) for _ in range(count)])

  def __call__(self, x, *args):
    """Returns x and the blocks' stats stacked along a leading layer axis."""
    def apply_block(block, x):
      return block(x, *args)
    if not self.scan_layers:
      remat_block = apply_block if self.remat_policy is None else nnx.remat(
          apply_block, policy=self.remat_policy)
      stats = []
      for block in self.blocks:
        x, block_stats = remat_block(block, x)
        stats.append(block_stats)
      return x, jax.tree.map(lambda *s: jnp.stack(s), *stats)

    # A plain lax.scan over the stacked block state (rather than nnx.scan) keeps the stack
    # usable from inside other traced loops, e.g. the sampler's ODE scan.
    graphdef, stacked = nnx.split(self.blocks)

    def scan_body(x, block_state):
      return apply_block(nnx.merge(graphdef, block_state), x)
    if self.remat_policy is not None:
      scan_body = jax.checkpoint(scan_body, policy=self.remat_policy)
    return jax.lax.scan(scan_body, x, stacked)

  def decode(self, x, positions, mask, token_kind, caches, index):
    """caches: (keys, values) stacked over this run's layers; returns x and them updated."""
    if not self.scan_layers:
      keys, values = caches
      for i, block in enumerate(self.blocks):
        x, (k, v) = block.decode(x, positions, mask, token_kind, (keys[i], values[i]), index)
        keys, values = keys.at[i].set(k), values.at[i].set(v)
      return x, (keys, values)
    graphdef, stacked = nnx.split(self.blocks)

    def scan_body(x, layer):
      block_state, cache = layer
      return nnx.merge(graphdef, block_state).decode(x, positions, mask, token_kind, cache,
                                                     index)
    return jax.lax.scan(scan_body, x, (stacked, caches))


class DecoderStack(nnx.Module):
  """num_layers DecoderBlocks as runs of consecutive same-kind layers (see is_moe_layer)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    kinds = [is_moe_layer(cfg, i) for i in range(cfg.num_layers)]
    runs = [(moe, len(list(group))) for moe, group in itertools.groupby(kinds)]
    self.runs = nnx.List([LayerRun(cfg, count, moe, rngs=rngs) for moe, count in runs])

  def __call__(self, x, positions, mask, token_kind):
    """Returns x and the MoE layers' routing stats, stacked in layer order ({} if none)."""
    stats = []
    for run in self.runs:
      x, run_stats = run(x, positions, mask, token_kind)
      if run_stats:
        stats.append(run_stats)
    return x, jax.tree.map(lambda *s: jnp.concatenate(s), *stats) if stats else {}

  def decode(self, x, positions, mask, token_kind, caches, index):
    new_caches = []
    for run, cache in zip(self.runs, caches):
      x, cache = run.decode(x, positions, mask, token_kind, cache, index)
      new_caches.append(cache)
    return x, new_caches

  def update_router_bias(self, expert_load, rate: float):
    """Aux-loss-free balancing: raise the bias of under-loaded experts, lower the others.

    expert_load [moe_layers, E] as returned by __call__; a no-op without sigmoid routers.
    """
    start = 0
    for run in self.runs:
      if not run.moe:
        continue
      load = expert_load[start:start + run.count]
      start += run.count
      step = rate * jnp.sign(jnp.mean(load, axis=-1, keepdims=True) - load)   # [count, E]
      leaves, treedef = jax.tree.flatten(nnx.state(run, RouterBias))
      if not leaves:
        continue
      new = [leaves[0] + step] if run.scan_layers else [b + s for b, s in zip(leaves, step)]
      nnx.update(run, jax.tree.unflatten(treedef, new))


class Transfusion(nnx.Module):
  """Decoder-only transformer trained with next-token CE on text and flow matching on vision."""

  def __init__(self, cfg, patch_dim: int, *, rngs: nnx.Rngs, tokens_per_frame: int = 0,
               visual: bool = True):
    """`tokens_per_frame`: latent tokens of one frame, for `model.frame_positions`.
    `visual`: False for rows that hold no frames (data.max_frames=0): the model is then a
    text-only transformer, with no visual projections, flow head, timestep MLP or frame
    positions, and its visual prediction is None."""
    self.cfg, self.dtype = cfg, jnp.dtype(cfg.dtype)
    d_model, std = cfg.d_model, cfg.init_std
    self.embed = nnx.Embed(cfg.vocab_size, d_model, dtype=self.dtype, rngs=rngs,
                           embedding_init=layers.dense_init(std, ("vocab", "embed")))
    if visual:
      self._build_visual_path(cfg, patch_dim, tokens_per_frame, rngs)
    else:
      self.frame_positions = self.visual_in = self.time_embed = self.visual_out = None
    self.decoder = DecoderStack(cfg, rngs=rngs)
    self.final_norm = layers.RMSNorm(d_model, cfg.norm_eps, self.dtype)
    # Read-outs emit f32 from the f32 accumulator: the losses need f32 logits anyway.
    self.lm_head = None if cfg.tie_embeddings else layers.linear(
        d_model, cfg.vocab_size, dtype=self.dtype, std=std, axes=("embed", "vocab"), rngs=rngs,
        out_dtype=jnp.float32)
    for table in (self.embed, self.frame_positions):
      if table is not None:
        layers.mark_used_by(table, layers.LOOKUP)
    if self.lm_head is not None:
      layers.mark_used_by(self.lm_head, layers.TEXT)

  def _build_visual_path(self, cfg, patch_dim: int, tokens_per_frame: int, rngs):
    """The latents' input projection, timestep MLP, flow head and frame positions."""
    d_model, std = cfg.d_model, cfg.init_std
    # Where a token sits in its frame, learned (DiT's absolute position embedding): RoPE
    # alone gives a frame's tokens only their offsets from each other and the prefix.
    if cfg.frame_positions and tokens_per_frame < 1:
      raise ValueError("model.frame_positions needs the latent tokens per frame: pass "
                       "tokens_per_frame (run.build_model does)")
    self.frame_positions = nnx.Embed(
        tokens_per_frame, d_model, dtype=self.dtype, rngs=rngs,
        embedding_init=layers.dense_init(std, (None, "embed"))) if cfg.frame_positions else None
    self.visual_in = layers.linear(patch_dim, d_model, dtype=self.dtype, std=std,
                                   axes=("latent", "embed"), use_bias=True, rngs=rngs)
    self.time_embed = TimestepEmbedding(cfg, rngs=rngs)
    self.visual_out = FlowHead(cfg, patch_dim, rngs=rngs) if cfg.flow_head.width else (
        layers.linear(d_model, patch_dim, dtype=self.dtype, std=std, axes=("embed", "latent"),
                      use_bias=True, rngs=rngs, out_dtype=jnp.float32))
    for head in (self.visual_in, self.time_embed, self.visual_out):
      layers.mark_used_by(head, layers.VISUAL)

  def __call__(self, inputs: ModelInputs):
    """Returns text logits [B, L, V] f32, visual prediction [B, L, patch_dim] f32 (None for
    a text-only model) and the MoE layers' routing stats (per MoE layer, in order; {} for a dense model)."""
    x, token_kind, time_h = self._embed(inputs)
    visible = key_ranges(inputs.segment_ids, inputs.block_ids)
    x, moe_stats = self.decoder(x, inputs.positions, visible, token_kind)
    return (*self._readout(x, inputs, time_h), moe_stats)

  def init_cache(self, batch: int, length: int) -> "DecodeCache":
    """An empty KV cache of `length` slots per row (segment id 0: nothing written)."""
    cfg = self.cfg
    def run_cache(run):
      shape = (run.count, batch, length, cfg.num_kv_heads, cfg.head_dim)
      return jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)
    ids = jnp.zeros((batch, length), jnp.int32)
    return DecodeCache([run_cache(run) for run in self.decoder.runs], ids, ids)

  def decode(self, inputs: ModelInputs, cache: "DecodeCache", index):
    """Runs a chunk [B, T] of a sequence — a prompt, one next token, or a whole visual
    block — at cache slots index..index+T-1 against everything written before; returns
    its text logits and visual prediction like __call__, and the updated cache. Chunk by
    chunk, this equals running the whole sequence at once (tests/test_decode.py)."""
    x, token_kind, time_h = self._embed(inputs)
    write = lambda ids, new: jax.lax.dynamic_update_slice_in_dim(ids, new, index, axis=1)
    segment_ids = write(cache.segment_ids, inputs.segment_ids)
    block_ids = write(cache.block_ids, inputs.block_ids)
    mask = cached_attention_mask(inputs.segment_ids, inputs.block_ids, segment_ids, block_ids,
                                 index)
    x, layers_cache = self.decoder.decode(x, inputs.positions, mask, token_kind, cache.layers,
                                          index)
    logits, prediction = self._readout(x, inputs, time_h)
    return logits, prediction, DecodeCache(layers_cache, segment_ids, block_ids)

  def _embed(self, inputs: ModelInputs):
    """Flat token embeddings [B·L, d] (text embedding or latent + timestep embedding), token
    kinds and the timestep embeddings. The decoder works on flat tokens; only attention sees
    [B, L, ...]: weight gradients then contract over one axis, which XLA:CPU runs ~2× faster
    than over two."""
    text_h = self.embed(flat(inputs.tokens))
    if self.visual_in is None:
      kind = jnp.where(inputs.modality == MODALITY_TEXT, TOKEN_KINDS.index("text"), -1)
      return sharding.constrain(text_h, ("batch", None)), flat(kind).astype(jnp.int32), None
    generated = inputs.timesteps > 0 if inputs.generated is None else inputs.generated
    token_kind = flat(token_kinds(inputs.modality, generated))
    visual = is_visual(token_kind)
    time_h = self.time_embed(flat(inputs.timesteps)).astype(self.dtype)
    visual_h = self.visual_in(flat(inputs.visual_latents).astype(self.dtype)) + time_h
    if self.frame_positions is not None:
      index = flat(index_in_block(inputs.positions, inputs.block_ids))
      visual_h = visual_h + self.frame_positions(
          jnp.minimum(index, self.frame_positions.num_embeddings - 1))
    x = sharding.constrain(jnp.where(visual[..., None], visual_h, text_h), ("batch", None))
    return x, token_kind, time_h

  def _readout(self, x, inputs: ModelInputs, time_h):
    """Text logits and the flow head's prediction, [B, L, ...] f32."""
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    def unflat(t):
      return t.reshape(*inputs.tokens.shape, *t.shape[1:]).astype(jnp.float32)
    if self.visual_out is None:
      return unflat(logits), None
    if isinstance(self.visual_out, FlowHead):
      prediction = self.visual_out(x, flat(inputs.visual_latents), time_h)
    else:
      prediction = self.visual_out(x)
    return unflat(logits), unflat(prediction)


@flax.struct.dataclass
class DecodeCache:
  """Keys and values of every layer (one (keys, values) pair per layer run, each
  [layers, B, S, kv_heads, head_dim]) and the segment / block ids of the written slots."""
  layers: list
  segment_ids: jnp.ndarray
  block_ids: jnp.ndarray
