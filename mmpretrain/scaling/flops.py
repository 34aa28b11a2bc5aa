"""Training FLOPs of the unified model (the 6·N·D rule plus attention), counting the
parameters a token actually multiplies: its k routed experts of an MoE layer, and one of
the two FFNs of a modality-FFN layer."""
import numpy as np
from flax import nnx

from mmpretrain.model.moe import experts_per_token
from mmpretrain.train.step import build_model

EXPERT_WEIGHTS = ("gate", "up", "down")     # stacked [..., E, in, out] routed-expert weights


def active_matmul_params(config) -> int:
  """Parameters that take part in a matmul per token, LM head and routers included.

  The input embedding is a gather, not a matmul, so it is left out (unless tied, where
  it is the LM head and counted through `attend`). Routed experts count k of E;
  `vision_ffn` and the visual shared expert are left out because each token runs either
  them or their text twins.
  """
  state = nnx.state(nnx.eval_shape(lambda: build_model(config, 0)))
  count = 0
  for path, value in nnx.to_flat_state(state):
    size = int(np.prod(value.shape))
    if "vision_ffn" in path or "shared_visual" in path:   # the visual twin of a text FFN
      continue
    if path[-1] == "kernel":
      count += size
    elif path[-1] in EXPERT_WEIGHTS and "experts" in path:
      count += size // value.shape[-3] * experts_per_token(config.model.moe)
  if config.model.tie_embeddings:
    count += config.model.vocab_size * config.model.d_model
  return count


def train_flops_per_token(config) -> float:
  """6·N_active for forward+backward matmuls, plus 12·layers·heads·head_dim·seq_len for the
  full L×L attention scores and weighted sums that a dense kernel computes."""
  m = config.model
  attention = 12 * m.num_layers * m.num_heads * m.head_dim * config.data.seq_len
  return 6 * active_matmul_params(config) + attention
