"""Training FLOPs of the unified model, per modality.

Model FLOPs (what scaling laws count) are split by the kind of token that causes them:
6 FLOPs per active matmul parameter per token (forward + backward) — the decoder's
attention projections and FFN, only the k routed experts a token uses of an MoE layer and
one of the two FFNs of a modality-FFN layer, the LM head for text tokens and the flow head
(latent in/out projections, timestep MLP) for visual tokens — plus 12·layers·heads·head_dim
per (query, key) pair that the block-causal mask lets a query attend.

Executed FLOPs are what this implementation's train step runs, to check the count against
XLA's cost analysis of the compiled step on CPU: every slot (padding too) goes through both
heads, both FFNs of a modality-FFN layer (its CPU form, `model.modality_ffn_impl=select`)
and both shared experts of a per-modality MoE, capacity dispatch runs capacity_factor·k
expert slots per token, attention is the dense L×L kernel, and remat recomputes the
forward of the layers it wraps.
"""
import dataclasses

import numpy as np
from flax import nnx

from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL
from mmpretrain.model import layers
from mmpretrain.model.masks import attention_mask
from mmpretrain.model.moe import experts_per_token, resolve_dispatch
from mmpretrain.run import build_model

@dataclasses.dataclass(frozen=True)
class MatmulParams:
  """Matmul parameters one token multiplies, by where they sit."""
  text_decoder: int       # active for a text token: k of E routed experts, its FFN twin
  visual_decoder: int     # the same for a visual token
  decoder_executed: int   # what the step runs for every slot (see module docstring)
  lm_head: int
  flow_head: int          # latent in/out projections, timestep MLP, the wide head

  @property
  def decoder(self) -> int:
    """Decoder parameters per token (the modality twins are the same size)."""
    return max(self.text_decoder, self.visual_decoder)


def matmul_params(config) -> MatmulParams:
  """Counts the matmul parameters of the model built from `config` (shapes only, nothing
  allocated), by each parameter's annotations: which tokens multiply it
  (`layers.USED_BY`) and its logical axes. Embedding tables are gathers, not matmuls, so
  they count only when tied (then the table is the LM head)."""
  moe = config.model.moe
  k = experts_per_token(moe)
  routed_executed = k * (moe.capacity_factor if resolve_dispatch(moe.dispatch) == "capacity"
                         else 1.0)
  model = nnx.eval_shape(lambda: build_model(config, 0))
  counts = {}
  for part, module in (("decoder", model.decoder), ("whole", model)):
    active = {layers.TEXT: 0.0, layers.VISUAL: 0.0, "executed": 0.0}
    for _, param in nnx.to_flat_state(nnx.state(module, nnx.Param)):
      used_by = param.get_metadata().get(layers.USED_BY)
      if used_by == layers.LOOKUP or layers.unstacked_ndim(param) < 2:
        continue                                        # tables, biases, norm scales
      size = float(np.prod(param.shape))
      multiplied = executed = size
      if used_by == layers.ROUTED:
        multiplied = size / param.shape[layers.logical_axes(param).index("expert")] * k
        executed = multiplied / k * routed_executed
      for modality in (layers.TEXT, layers.VISUAL):
        if used_by in (None, layers.ROUTED, modality):
          active[modality] += multiplied
      active["executed"] += executed
    counts[part] = active
  decoder, whole = counts["decoder"], counts["whole"]
  tied = config.model.vocab_size * config.model.d_model if config.model.tie_embeddings else 0
  return MatmulParams(
      text_decoder=int(round(decoder[layers.TEXT])),
      visual_decoder=int(round(decoder[layers.VISUAL])),
      decoder_executed=int(round(decoder["executed"])),
      lm_head=int(round(whole[layers.TEXT] - decoder[layers.TEXT])) + tied,
      flow_head=int(round(whole[layers.VISUAL] - decoder[layers.VISUAL])))


def active_matmul_params(config, params: MatmulParams | None = None) -> int:
  """Matmul parameters per token, LM head and flow head both included (the 6·N rule's N
  for a model that reads and writes both modalities)."""
  p = params or matmul_params(config)
  return p.decoder + p.lm_head + p.flow_head


def train_flops_per_token(config, params: MatmulParams | None = None) -> float:
  """6·N_active for forward+backward matmuls, plus 12·layers·heads·head_dim·seq_len for the
  full L×L attention scores and weighted sums that a dense kernel computes. `params`: the
  config's matmul_params, when the caller has them already."""
  m = config.model
  attention = 12 * m.num_layers * m.num_heads * m.head_dim * config.data.seq_len
  return 6 * active_matmul_params(config, params) + attention


@dataclasses.dataclass(frozen=True)
class TokenCounts:
  """Tokens of one training step by kind, and the (query, key) pairs the mask allows for
  text and for visual queries."""
  text: float
  visual: float
  padding: float
  text_pairs: float
  visual_pairs: float
  rows: int
  seq_len: int


def token_counts(batch) -> TokenCounts:
  """Counts of one packed batch (the batch contract's modality, segment and block ids)."""
  modality = np.asarray(batch["modality"])
  allowed = np.asarray(attention_mask(np.asarray(batch["segment_ids"]),
                                      np.asarray(batch["block_ids"])))[:, 0]   # [B, L, L]
  keys_per_query = allowed.sum(-1)
  is_text, is_visual = modality == MODALITY_TEXT, modality == MODALITY_VISUAL
  return TokenCounts(text=float(is_text.sum()), visual=float(is_visual.sum()),
                     padding=float((~is_text & ~is_visual).sum()),
                     text_pairs=float(keys_per_query[is_text].sum()),
                     visual_pairs=float(keys_per_query[is_visual].sum()),
                     rows=modality.shape[0], seq_len=modality.shape[1])


def mean_token_counts(batches) -> TokenCounts:
  counts = [token_counts(b) for b in batches]
  mean = {f.name: float(np.mean([getattr(c, f.name) for c in counts]))
          for f in dataclasses.fields(TokenCounts) if f.name not in ("rows", "seq_len")}
  return TokenCounts(**mean, rows=counts[0].rows, seq_len=counts[0].seq_len)


@dataclasses.dataclass(frozen=True)
class StepFlops:
  text: float        # model FLOPs caused by text tokens
  visual: float      # model FLOPs caused by visual tokens
  executed: float    # what this implementation's step runs (compare with XLA)

  @property
  def model(self) -> float:
    return self.text + self.visual


def step_flops(config, counts: TokenCounts, params: MatmulParams | None = None) -> StepFlops:
  m = config.model
  params = params or matmul_params(config)
  per_pair = 12 * m.num_layers * m.num_heads * m.head_dim
  text = (6 * counts.text * (params.text_decoder + params.lm_head)
          + per_pair * counts.text_pairs)
  visual = (6 * counts.visual * (params.visual_decoder + params.flow_head)
            + per_pair * counts.visual_pairs)
  slots = counts.rows * counts.seq_len
  # Remat recomputes the decoder's forward (2 of the 6) unless matmul outputs are saved.
  recompute = 2 if m.remat in ("full",) else 0
  decoder = (6 + recompute) * slots * params.decoder_executed
  heads = 6 * slots * (params.lm_head + params.flow_head)
  attention = (per_pair + (per_pair // 3 if recompute else 0)) * slots * counts.seq_len
  return StepFlops(text=text, visual=visual, executed=decoder + heads + attention)


def xla_step_flops(trainer, state, batch) -> float:
  """FLOPs of the compiled train step by XLA's own cost analysis. XLA counts a loop body
  once, so compare configs without layer scan or gradient accumulation."""
  analysis = trainer.lower_step(state, batch).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):      # older jax: one dict per computation
    analysis = analysis[0]
  return float(analysis["flops"])
