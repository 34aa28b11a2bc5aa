"""The MoE layer: its sizes from `config.model.moe`, the dispatch `auto` stands for, the
routed experts' parameters, and MoE, which routes, runs the configured dispatch
(contract.py) and adds the shared experts."""
import jax.numpy as jnp
from flax import nnx

from mmpretrain.batch import is_visual
from mmpretrain.model import layers
from mmpretrain.model.moe import capacity, dropless, exchange
from mmpretrain.model.moe.contract import Dispatch, ExpertParams, Routing
from mmpretrain.model.moe.router import Router


def resolve_dispatch(dispatch: str) -> str:
  """The dispatch `auto` stands for: capacity on every platform, because each XLA backend
  runs dropless's jax.lax.ragged_dot, or its gradient, as more than a grouped matmul:
  XLA:CPU as a loop (docs/benchmarks.md, "MoE overhead"); XLA:TPU's weight gradient runs
  every group's rows against every expert, so the step is slower and larger (docs/tpu.md,
  "MoE on TPU: which dispatch, which mesh"); XLA:GPU as a dense matmul over every expert,
  far slower and out of memory at a chip's tokens (docs/gpu.md, "Measured on one H200")."""
  return "capacity" if dispatch == "auto" else dispatch


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


class Experts(nnx.Module):
  """E SwiGLU experts stored stacked: gate/up [E, d, f], down [E, f, d]."""

  def __init__(self, num_experts: int, d_model: int, hidden: int, cfg, *, rngs: nnx.Rngs):
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.num_layers) ** 0.5
    def param(shape, std, axes):
      return nnx.Param(layers.dense_init(std, axes)(rngs.params(), shape))
    self.gate = param((num_experts, d_model, hidden), std, ("expert", "embed", "mlp"))
    self.up = param((num_experts, d_model, hidden), std, ("expert", "embed", "mlp"))
    self.down = param((num_experts, hidden, d_model), out_std, ("expert", "mlp", "embed"))
    self.dtype = jnp.dtype(cfg.dtype)

  def params(self) -> ExpertParams:
    """The parameters in the compute dtype, as the dispatches take them."""
    return ExpertParams(*(w[...].astype(self.dtype) for w in (self.gate, self.up, self.down)))


class MoE(nnx.Module):
  """Routed experts plus optional shared experts; returns (output, routing stats)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    moe = cfg.moe
    num_experts, k = expert_count(moe), experts_per_token(moe)
    hidden = expert_hidden(moe, cfg.mlp_dim)
    self.router = Router(cfg.d_model, num_experts, k, moe, cfg.init_std, rngs=rngs)
    self.experts = layers.mark_used_by(
        Experts(num_experts, cfg.d_model, hidden, cfg, rngs=rngs), layers.ROUTED)
    shared_hidden = moe.shared_mlp_dim or hidden
    has_shared = moe.shared_experts in ("global", "per_modality")
    self.shared = layers.SwiGLU(cfg, rngs=rngs, mlp_dim=shared_hidden) if has_shared else None
    per_modality = moe.shared_experts == "per_modality"
    self.shared_visual = (layers.mark_used_by(
        layers.SwiGLU(cfg, rngs=rngs, mlp_dim=shared_hidden), layers.VISUAL)
                          if per_modality else None)
    if per_modality:
      layers.mark_used_by(self.shared, layers.TEXT)
    self.dispatch, self.capacity_factor = moe.dispatch, moe.capacity_factor
    self.group_rows, self.group_tokens = moe.capacity_group_rows, moe.capacity_group_tokens
    self.capacity_impl = moe.capacity_impl
    self.buffer_factor = moe.dropless_buffer_factor
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x, token_kind, rows: int):
    """x [T, d] (T = rows · length, row-major); token_kind int [T] (batch.TOKEN_KINDS index,
    -1 = padding)."""
    token_mask = token_kind >= 0
    experts, combine, stats = self.router(x, token_kind)
    k = experts.shape[1]
    out, kept = exchange.run(self._dispatch(x.shape[0], k, rows), x,
                             Routing(experts, combine, token_mask), self.experts.params())
    drop_rate = 1.0 - kept / jnp.maximum(k * jnp.sum(token_mask), 1)
    if self.shared_visual is not None:
      out = out + layers.paired_swiglu(self.shared, self.shared_visual, x,
                                       is_visual(token_kind))
    elif self.shared is not None:
      out = out + self.shared(x)
    stats["drop_rate"] = drop_rate
    return out.astype(self.dtype), stats

  def _dispatch(self, tokens: int, k: int, rows: int) -> Dispatch:
    """The dispatch model.moe configures, for `rows` rows of `tokens` tokens in all."""
    num_experts = self.router.num_experts
    if resolve_dispatch(self.dispatch) == "dropless":
      return dropless.Dropless(num_experts, self.buffer_factor, self.dtype)
    length = tokens // self.capacity_groups(tokens, rows)
    return capacity.FILLS[self.capacity_impl].sized(num_experts, k, length,
                                                    self.capacity_factor, self.dtype)

  def capacity_groups(self, tokens: int, rows: int) -> int:
    """How many capacity groups `rows` rows of `tokens` tokens in all make: groups of
    `capacity_group_tokens` consecutive tokens of a row, else of `capacity_group_rows`
    whole rows. A row that `capacity_group_tokens` does not divide (a sampler's prompt or
    block; training rows are checked by the config) is grouped by the largest divisor of
    its length below it."""
    length = tokens // rows
    if self.group_tokens:
      group = max(n for n in range(1, min(self.group_tokens, length) + 1) if length % n == 0)
      return tokens // group
    if rows % self.group_rows:
      raise ValueError(f"model.moe.capacity_group_rows={self.group_rows} does not divide "
                       f"the {rows} rows of a (micro)batch")
    return rows // self.group_rows
