"""Dense softmax attention in the compute dtype, for XLA on TPU and GPU.

The [B, heads, T, S] scores are the largest tensors of a layer, and the passes over them
set its speed: the scores and their exponentials stay in the compute dtype (bf16), the
matmuls accumulate in f32, and the softmax's normalisation divides the [T, D] output of
the value mix rather than the [T, S] probabilities. The mask comes in as a bool array
that the caller builds inside the layer (masks.ranges_mask), which XLA fuses into the
exponentials' pass instead of reading a stored [L, L] mask per layer. Autodiff writes the
backward: its passes over the scores fuse as the forward's do.
"""
import jax
import jax.numpy as jnp

# q, k, v [B, T|S, heads, D]; scores [B, heads, T, S]; the value mix back to [B, T, heads, D].
_SCORES, _MIX = "btnd,bsnd->bnts", "bnts,bsnd->btnd"


def dense_attention(q, k, v, mask):
  """Softmax attention. q [B, T, heads, D]; k, v [B, S, heads, D]; mask bool [B or 1, 1,
  T, S], True = attend. Returns [B, T, heads, D] in q's dtype."""
  scores = jnp.einsum(_SCORES, q, k) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  scores = jnp.where(mask, scores, jnp.finfo(q.dtype).min)
  # Any per-row shift leaves the softmax as it is: its gradient is zero, and saying so
  # spares the backward a pass over the scores for the max's.
  row_max = jax.lax.stop_gradient(scores.max(-1, keepdims=True))
  exps = jnp.exp(scores - row_max)
  row_sum = jnp.sum(exps, -1, dtype=jnp.float32)                       # [B, heads, T]
  out = jnp.einsum(_MIX, exps, v, preferred_element_type=jnp.float32)
  return (out / jnp.swapaxes(row_sum, 1, 2)[..., None]).astype(q.dtype)
