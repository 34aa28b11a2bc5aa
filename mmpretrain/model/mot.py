"""Mixture-of-Transformers (Liang et al., 2024): every non-embedding parameter of a block
is the token's modality's own — both norms, the q/k/v/o projections with their QK-norms,
and the FFN (`model/modality_ffn.py`) — while attention stays global: a text query sees
visual keys, and the reverse, exactly as in a shared block.

`model.mot=True` builds these parts in every block in place of the shared ones. Each
token's norm and projections are picked from both modalities' (the select form: both
projections run on every token, so the attention projections cost twice their FLOPs; the
FFN pair runs as `model.modality_ffn_impl` says). FLOP counts charge each token only its
own modality's weights (`layers.mark_used_by`), so MFU counts the model's work, not the
select form's.
"""
import jax.numpy as jnp
from flax import nnx

from mmpretrain.model import attention, layers


def pick(text, visual, is_visual):
  """Per token, `visual` where `is_visual` [B·L] (or [B, L]) else `text`: arrays whose
  leading axes are the tokens."""
  where = is_visual.reshape(is_visual.shape + (1,) * (text.ndim - is_visual.ndim))
  return jnp.where(where, visual, text)


class ModalityNorm(nnx.Module):
  """An RMSNorm per modality, each token through its own."""

  def __init__(self, cfg):
    dtype = jnp.dtype(cfg.dtype)
    self.text = layers.mark_used_by(layers.RMSNorm(cfg.d_model, cfg.norm_eps, dtype),
                                    layers.TEXT)
    self.visual = layers.mark_used_by(layers.RMSNorm(cfg.d_model, cfg.norm_eps, dtype),
                                      layers.VISUAL)

  def __call__(self, x, is_visual):
    return pick(self.text(x), self.visual(x), is_visual)


class ModalityAttention(nnx.Module):
  """Attention whose projections are each token's modality's, over the whole row."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.text = layers.mark_used_by(layers.Attention(cfg, rngs=rngs), layers.TEXT)
    self.visual = layers.mark_used_by(layers.Attention(cfg, rngs=rngs), layers.VISUAL)

  def _project(self, x, positions, is_visual):
    rows = is_visual.reshape(positions.shape)
    return tuple(pick(t, v, rows) for t, v in zip(self.text.project(x, positions),
                                                  self.visual.project(x, positions)))

  def _output(self, out, is_visual):
    return pick(self.text.output(out), self.visual.output(out), is_visual)

  def __call__(self, x, positions, visible, is_visual):
    """As layers.Attention, with `is_visual` [B·L] naming each token's modality."""
    q, k, v = self._project(x, positions, is_visual)
    out = attention.attend(q, k, v, visible, self.text.impl, self.text.chunk)
    return self._output(out, is_visual)

  def decode(self, x, positions, mask, cache, index, is_visual):
    """As layers.Attention.decode, with `is_visual` [B·T] for the new tokens."""
    q, k, v = self._project(x, positions, is_visual)
    out, cache = layers.attend_with_cache(q, k, v, mask, cache, index, self.text.impl)
    return self._output(out, is_visual), cache
