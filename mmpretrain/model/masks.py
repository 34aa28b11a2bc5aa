"""The one attention mask of the model (docs/architecture.md, the batch contract).

allowed(i, j) = same document ∧ (j ≤ i ∨ same visual block)

Text is causal; the tokens of one image/frame see each other bidirectionally; video frames
are separate blocks, so across frames attention is block-causal. Padding has segment id 0
and only sees other padding, which keeps every softmax row non-empty.
"""
import jax
import jax.numpy as jnp

from mmpretrain.model.chunked_attention import KeyRanges


def attention_mask(segment_ids: jnp.ndarray, block_ids: jnp.ndarray) -> jnp.ndarray:
  """[B, L] segment and block ids -> bool[B, 1, L, L] (query i, key j)."""
  q_seg, k_seg = segment_ids[:, :, None], segment_ids[:, None, :]
  q_blk, k_blk = block_ids[:, :, None], block_ids[:, None, :]
  length = segment_ids.shape[-1]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  same_block = (q_blk == k_blk) & (q_blk > 0)
  return ((q_seg == k_seg) & (causal[None] | same_block))[:, None]


def key_ranges(segment_ids: jnp.ndarray, block_ids: jnp.ndarray) -> KeyRanges:
  """The same rule as a key range per query, for attention that never builds [L, L]:
  documents and visual blocks are contiguous runs, so query i sees exactly the keys from
  its document's first token up to its own token (text, padding) or to its block's last
  token (a visual block)."""
  length = segment_ids.shape[-1]
  index = jnp.arange(length)
  seg_change = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  start = jax.lax.cummax(jnp.where(seg_change, index, 0), axis=1)
  run_ends = seg_change[:, 1:] | (block_ids[:, 1:] != block_ids[:, :-1])
  run_ends = jnp.concatenate([run_ends, jnp.ones_like(run_ends[:, :1])], 1)
  block_end = jax.lax.cummin(jnp.where(run_ends, index + 1, length), axis=1, reverse=True)
  end = jnp.where(block_ids > 0, block_end, index + 1)
  return KeyRanges(start.astype(jnp.int32), end.astype(jnp.int32))


def ranges_mask(ranges: KeyRanges, length: int) -> jnp.ndarray:
  """Key ranges [B, T] -> the bool mask [B, 1, T, length] they describe."""
  keys = jnp.arange(length)
  return ((keys >= ranges.start[..., None]) & (keys < ranges.end[..., None]))[:, None]


def cached_attention_mask(q_segment_ids, q_block_ids, segment_ids, block_ids, index):
  """The same rule for a chunk of T new tokens at cache slots index..index+T-1 against all
  S slots (q_* [B, T], segment/block ids of the slots [B, S]) -> bool[B, 1, T, S].
  Unwritten slots have segment id 0 and are never seen by a real token."""
  q_slot = index + jnp.arange(q_segment_ids.shape[-1])[:, None]
  k_slot = jnp.arange(segment_ids.shape[-1])[None, :]
  q_seg, k_seg = q_segment_ids[:, :, None], segment_ids[:, None, :]
  q_blk, k_blk = q_block_ids[:, :, None], block_ids[:, None, :]
  same_block = (q_blk == k_blk) & (q_blk > 0)
  return ((q_seg == k_seg) & ((k_slot <= q_slot)[None] | same_block))[:, None]
