"""The router: each token's k experts and their combine weights, softmax top-k or sigmoid
top-k with a selection bias (aux-loss-free balancing: the train step moves the bias by
load, outside the optimizer), and the statistics the losses and the routing log read."""
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mmpretrain.batch import TOKEN_KINDS
from mmpretrain.model import layers
from mmpretrain.model.moe.contract import DISPATCH_INDICES


class RouterBias(nnx.Variable):
  """Per-expert selection bias of the sigmoid router; updated by load, not by gradients."""


def _pick(probs, experts):
  """probs [T, E] at the chosen experts [T, k], as a masked sum over E: TPU gathers read
  a whole tile per element, and take_along_axis's gradient would be a scatter-add
  (docs/benchmarks.md, "The paper's MoE step on a v5p-64": router weights)."""
  chosen = experts[..., None] == jnp.arange(probs.shape[-1])               # [T, k, E]
  return jnp.sum(jnp.where(chosen, probs[:, None, :], 0.0), axis=-1)


def _router_logits(x, kernel):
  """x [T, d] @ kernel [d, E] in f32, written as a batched matmul over a unit axis so that
  the dots_no_batch remat policy recomputes it for the backward rather than keep [T, E]
  in f32 for every MoE layer: HBM a large expert count cannot spare, against a matmul of
  d·E a token to recompute (docs/tpu.md, "The routers' logits recomputed")."""
  return jnp.einsum("btd,bde->bte", x[None].astype(jnp.float32),
                    kernel[None].astype(jnp.float32))[0]


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
    """x [T, d], token_kind int [T] -> experts int32 [T, k], combine f32 [T, k], stats."""
    logits = _router_logits(x, self.kernel[...])
    if self.kind == "softmax":
      probs = jax.nn.softmax(logits, axis=-1)
      _, experts = jax.lax.top_k(jax.lax.stop_gradient(probs), self.k)
    else:
      probs = jax.nn.sigmoid(logits)
      _, experts = jax.lax.top_k(jax.lax.stop_gradient(probs) + self.bias[...], self.k)
    experts = checkpoint_name(experts, DISPATCH_INDICES)
    combine = _pick(probs, experts)                  # the sigmoid bias picks, never weighs
    if self.renormalize:
      combine = combine / jnp.sum(combine, axis=-1, keepdims=True)
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
    return experts, combine, stats
