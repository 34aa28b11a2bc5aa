"""Mixture-of-Experts FFN: routers, fine-grained experts, shared experts, two dispatches.

Config (`config.model.moe`):
  num_experts, experts_per_token — before granularity; `granularity` G multiplies both and
      divides the expert hidden size (`expert_mlp_dim`, default model.mlp_dim), so active
      FLOPs stay fixed while experts get finer.
  router — "softmax" (top-k of softmax probabilities, `renormalize` optional) or "sigmoid"
      (top-k of sigmoid scores + a load-balancing bias that the train step nudges outside
      the optimizer: aux-loss-free balancing).
  shared_experts — "none", "global" (one always-on expert), or "per_modality" (an always-on
      text expert for text tokens and a vision expert for visual tokens).
  dispatch — "dropless" (tokens sorted by expert, grouped matmuls with jax.lax.ragged_dot),
      "capacity" (GShard-style per-row, per-expert buffers of capacity_factor·L·k/E slots,
      batched einsum; overflow is dropped and the token keeps only its residual), or "auto"
      (capacity on CPU, where ragged_dot is ~10× slower than the einsum; dropless elsewhere).
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain import sharding
from mmpretrain.model import layers


class RouterBias(nnx.Variable):
  """Per-expert selection bias of the sigmoid router; updated by load, not by gradients."""


def expert_count(moe) -> int:
  return moe.num_experts * moe.granularity


def experts_per_token(moe) -> int:
  return moe.experts_per_token * moe.granularity


def expert_hidden(moe, mlp_dim: int) -> int:
  hidden = moe.expert_mlp_dim or mlp_dim
  if hidden % moe.granularity:
    raise ValueError(f"model.moe.granularity={moe.granularity} does not divide the expert "
                     f"hidden size {hidden}")
  return hidden // moe.granularity


# Token kinds for routing statistics (-1 = padding): text, a clean image or frame (read,
# "understanding"), a noisy one (being generated).
TOKEN_KINDS = ("text", "visual_understanding", "visual_generation")


class Router(nnx.Module):
  """Token -> (k expert ids, k combine weights) plus the auxiliary statistics."""

  def __init__(self, d_model: int, num_experts: int, k: int, moe, init_std: float, *,
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        layers.dense_init(init_std, ("embed", "expert"))(rngs.params(), (d_model, num_experts)))
    self.num_experts, self.k = num_experts, k
    self.kind, self.renormalize = moe.router, moe.renormalize
    if self.kind == "sigmoid":
      self.bias = RouterBias(jnp.zeros((num_experts,), jnp.float32))

  def __call__(self, x, token_kind):
    """x [T, d], token_kind int [T] -> experts int32 [T, k], weights f32 [T, k], stats."""
    logits = jnp.dot(x.astype(jnp.float32), self.kernel[...].astype(jnp.float32))
    if self.kind == "softmax":
      probs = jax.nn.softmax(logits, axis=-1)
      weights, experts = jax.lax.top_k(probs, self.k)
    else:
      probs = jax.nn.sigmoid(logits)
      _, experts = jax.lax.top_k(probs + self.bias[...], self.k)   # bias picks, never weighs
      weights = jnp.take_along_axis(probs, experts, axis=-1)
    if self.renormalize:
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    valid = (token_kind >= 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    chosen = jnp.sum(jax.nn.one_hot(experts, self.num_experts), axis=1)        # [T, E]
    kind_load = jnp.einsum("tk,te->ke", jax.nn.one_hot(token_kind, len(TOKEN_KINDS)), chosen)
    load = jnp.sum(kind_load, axis=0)
    # Switch load balancing, k-way: E · Σ_e (share of assignments to e) · (mean prob of e).
    share = load / (count * self.k)
    mean_prob = jnp.sum(probs / jnp.sum(probs, -1, keepdims=True) * valid[:, None], 0) / count
    stats = {"load_balance": self.num_experts * jnp.sum(share * mean_prob),
             "router_z": jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * valid) / count,
             "expert_load": load, "kind_load": kind_load}
    return experts, weights, stats


def _swiglu(x, gate, up, down, dot):
  return dot(jax.nn.silu(dot(x, gate)) * dot(x, up), down)


class Experts(nnx.Module):
  """E SwiGLU experts stored stacked: gate/up [E, d, f], down [E, f, d]."""

  def __init__(self, num_experts: int, d_model: int, hidden: int, cfg, *, rngs: nnx.Rngs):
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5
    def weight(shape, std, axes):
      return nnx.Param(layers.dense_init(std, axes)(rngs.params(), shape))
    self.gate = weight((num_experts, d_model, hidden), std, ("expert", "embed", "mlp"))
    self.up = weight((num_experts, d_model, hidden), std, ("expert", "embed", "mlp"))
    self.down = weight((num_experts, hidden, d_model), out_std, ("expert", "mlp", "embed"))
    self.dtype = jnp.dtype(cfg.dtype)

  def weights(self):
    return tuple(w[...].astype(self.dtype) for w in (self.gate, self.up, self.down))

  def dropless(self, x, experts, weights, token_mask):
    """Sort (token, choice) pairs by expert and run grouped matmuls over the groups."""
    tokens, k = experts.shape
    flat = experts.reshape(-1)
    order = jnp.argsort(flat)
    token_of = order // k
    group_sizes = jnp.bincount(flat, length=self.gate.shape[0]).astype(jnp.int32)
    gate, up, down = self.weights()
    def dot(a, w):
      return jax.lax.ragged_dot(a, w, group_sizes,
                                preferred_element_type=jnp.float32).astype(self.dtype)
    y = _swiglu(x[token_of].astype(self.dtype), gate, up, down, dot)
    combine = (weights.reshape(-1)[order] * token_mask[token_of]).astype(jnp.float32)
    out = jnp.zeros((tokens, x.shape[-1]), jnp.float32).at[token_of].add(
        y.astype(jnp.float32) * combine[:, None])
    return out, jnp.zeros((), jnp.float32)

  def capacity(self, x, experts, weights, token_mask, rows: int, capacity_factor: float):
    """GShard-style dispatch with per-row expert buffers of C slots.

    Each row of the batch routes on its own (C = capacity_factor·L·k/E), so which tokens
    are dropped never depends on how the batch is sharded. The buffers [rows, E, C, d] are
    moved from row-sharded to expert-sharded for the expert matmuls and back: under an
    `expert` mesh axis these two reshardings are the all-to-alls of expert parallelism.
    """
    tokens, k = experts.shape
    length, num_experts, d = tokens // rows, self.gate.shape[0], x.shape[-1]
    slots = max(k, math.ceil(capacity_factor * length * k / num_experts))

    def claim_slots(row_experts, row_mask):
      """First choices claim slots before second choices; earlier tokens before later."""
      choice_major = row_experts.T.reshape(-1)                    # [k·L]
      valid = jnp.tile(row_mask, k)
      one_hot = jax.nn.one_hot(choice_major, num_experts, dtype=jnp.int32) * valid[:, None]
      position = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)
      kept = valid & (position < slots)
      return choice_major, jnp.where(kept, position, slots), kept   # slot `slots`: dropped

    expert_of, slot, kept = jax.vmap(claim_slots)(experts.reshape(rows, length, k),
                                                  token_mask.reshape(rows, length))
    pairs = jnp.tile(x.reshape(rows, length, d).astype(self.dtype), (1, k, 1))  # [rows, k·L, d]
    buffers = jax.vmap(lambda p, e, s: jnp.zeros((num_experts, slots, d), self.dtype)
                       .at[e, s].set(p, mode="drop"))(pairs, expert_of, slot)
    buffers = sharding.constrain(buffers, ("moe_batch", "expert", None, None))
    gate, up, down = self.weights()
    def dot(a, w):
      return jnp.einsum("recd,edf->recf", a, w,
                        preferred_element_type=jnp.float32).astype(self.dtype)
    y = _swiglu(buffers, gate, up, down, dot)
    y = sharding.constrain(y, ("batch", None, None, None))
    gathered = jax.vmap(lambda b, e, s: b.at[e, s].get(mode="fill", fill_value=0))(
        y, expert_of, slot).astype(jnp.float32)                   # [rows, k·L, d]
    combine = weights.reshape(rows, length, k).transpose(0, 2, 1).reshape(rows, k * length)
    combine = combine * kept
    out = jnp.sum((gathered * combine[..., None]).reshape(rows, k, length, d), axis=1)
    drop_rate = 1.0 - jnp.sum(kept) / jnp.maximum(k * jnp.sum(token_mask), 1)
    return out.reshape(tokens, d), drop_rate


class MoE(nnx.Module):
  """Routed experts plus optional shared experts; returns (output, routing stats)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    moe = cfg.moe
    num_experts, k = expert_count(moe), experts_per_token(moe)
    hidden = expert_hidden(moe, cfg.mlp_dim)
    self.router = Router(cfg.d_model, num_experts, k, moe, cfg.init_std, rngs=rngs)
    self.experts = Experts(num_experts, cfg.d_model, hidden, cfg, rngs=rngs)
    shared_hidden = moe.shared_mlp_dim or hidden
    has_shared = moe.shared_experts in ("global", "per_modality")
    self.shared = layers.SwiGLU(cfg, rngs=rngs, mlp_dim=shared_hidden) if has_shared else None
    self.shared_visual = (layers.SwiGLU(cfg, rngs=rngs, mlp_dim=shared_hidden)
                          if moe.shared_experts == "per_modality" else None)
    self.dispatch, self.capacity_factor = moe.dispatch, moe.capacity_factor
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x, token_kind, rows: int):
    """x [T, d] (T = rows · length, row-major); token_kind int [T] (TOKEN_KINDS index,
    -1 = padding)."""
    token_mask = token_kind >= 0
    experts, weights, stats = self.router(x, token_kind)
    dispatch = self.dispatch
    if dispatch == "auto":
      dispatch = "capacity" if jax.default_backend() == "cpu" else "dropless"
    if dispatch == "dropless":
      out, drop_rate = self.experts.dropless(x, experts, weights, token_mask)
    else:
      out, drop_rate = self.experts.capacity(x, experts, weights, token_mask, rows,
                                             self.capacity_factor)
    if self.shared_visual is not None:
      is_visual = token_kind >= TOKEN_KINDS.index("visual_understanding")
      out = out + jnp.where(is_visual[:, None], self.shared_visual(x), self.shared(x))
    elif self.shared is not None:
      out = out + self.shared(x)
    stats["drop_rate"] = drop_rate
    return out.astype(self.dtype), stats
