"""The one attention mask of the model (DESIGN.md batch contract).

allowed(i, j) = same document ∧ (j ≤ i ∨ same visual block)

Text is causal; the tokens of one image/frame see each other bidirectionally; video frames
are separate blocks, so across frames attention is block-causal. Padding has segment id 0
and only sees other padding, which keeps every softmax row non-empty.
"""
import jax.numpy as jnp


def attention_mask(segment_ids: jnp.ndarray, block_ids: jnp.ndarray) -> jnp.ndarray:
  """[B, L] segment and block ids -> bool[B, 1, L, L] (query i, key j)."""
  q_seg, k_seg = segment_ids[:, :, None], segment_ids[:, None, :]
  q_blk, k_blk = block_ids[:, :, None], block_ids[:, None, :]
  length = segment_ids.shape[-1]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  same_block = (q_blk == k_blk) & (q_blk > 0)
  return ((q_seg == k_seg) & (causal[None] | same_block))[:, None]
