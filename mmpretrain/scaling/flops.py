"""Training FLOPs of the unified model (the 6·N·D rule plus attention)."""
import numpy as np
from flax import nnx

from mmpretrain.train.step import build_model


def matmul_params(config) -> int:
  """Parameters that take part in a matmul per token: every kernel, LM head included.

  The input embedding is a gather, not a matmul, so it is left out (unless tied, where
  it is the LM head and counted through `attend`).
  """
  state = nnx.state(nnx.eval_shape(lambda: build_model(config, 0)))
  kernels = sum(int(np.prod(v.shape)) for path, v in nnx.to_flat_state(state)
                if path[-1] == "kernel")
  if config.model.tie_embeddings:
    kernels += config.model.vocab_size * config.model.d_model
  return kernels


def train_flops_per_token(config) -> float:
  """6·N for forward+backward matmuls, plus 12·layers·heads·head_dim·seq_len for the
  full L×L attention scores and weighted sums that a dense kernel computes."""
  m = config.model
  attention = 12 * m.num_layers * m.num_heads * m.head_dim * config.data.seq_len
  return 6 * matmul_params(config) + attention
