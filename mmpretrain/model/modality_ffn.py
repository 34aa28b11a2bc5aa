"""Modality-specific FFNs (the paper's improved dense baseline): a text SwiGLU and a vision
SwiGLU, each token through the one of its modality.

`model.modality_ffn_impl` says how:
  select — both FFNs on every token and the token's own output picked: twice the FFN
      FLOPs, but no sort and no grouped matmuls.
  grouped — each device's tokens sorted by modality (text first, each run in token order),
      both FFNs as grouped matmuls (jax.lax.ragged_dot) over the two runs, and the rows put
      back in order. One FFN's FLOPs forward and for the input gradient; XLA's TPU lowering
      of the weights' gradient still runs every token against both FFNs' weights.
  auto — grouped on TPU; select elsewhere. XLA:CPU runs a grouped matmul as a loop, and
      XLA:GPU as a dense matmul over every group, so grouped saves nothing there, with a
      sort to pay (docs/gpu.md, benchmarks/ffn_local.py on an H200).
Both are exact: they differ only in floating-point summation order.
"""
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mmpretrain import sharding
from mmpretrain.config_rules import MODALITY_FFN_IMPLS
from mmpretrain.model import layers, row_ops

# The grouped form's gate/up outputs, by name for the remat policy: saved where it saves
# matmul outputs (model.remat = dots, dots_no_batch), as it saves the select form's.
GROUPED_HIDDEN = "modality_ffn_hidden"


def resolve(impl: str, platform: str | None = None) -> str:
  """The implementation `auto` stands for on `platform` (default: jax's default backend)."""
  if impl not in MODALITY_FFN_IMPLS:
    raise ValueError(f"model.modality_ffn_impl={impl!r}: pick one of {MODALITY_FFN_IMPLS}")
  if impl == "auto":
    return "grouped" if (platform or jax.default_backend()) == "tpu" else "select"
  return impl


def apply(text: layers.SwiGLU, visual: layers.SwiGLU, x, is_visual, impl: str):
  """Per token of x [T, d], visual(x) where `is_visual` [T] else text(x)."""
  impl = resolve(impl)
  active = sharding.active_rules()
  if impl == "grouped" and active is not None and x.shape[0] % sharding.batch_ways(*active):
    impl = "select"        # shard_map needs equal shares of the tokens on every chip
  if impl == "select":
    return jnp.where(is_visual[:, None], visual(x), text(x))

  dtype = text.gate.dtype
  def stacked(name: str):
    return jnp.stack([getattr(ffn, name).kernel[...].astype(dtype) for ffn in (text, visual)])
  weights = stacked("gate"), stacked("up"), stacked("down")
  x = x.astype(dtype)
  if active is None:
    return _grouped(x, is_visual, *weights, embed=(), mlp=())
  mesh, rules = active
  def spec(*names):
    return sharding.partition_spec(names, rules, mesh)
  in_model, out_model = spec(None, "embed", "mlp"), spec(None, "mlp", "embed")
  tokens = spec("batch")

  def local(x, is_visual, gate, up, down):
    return _grouped(x, is_visual, gate, up, down,
                    embed=sharding.spec_axes(in_model[1]),
                    mlp=sharding.spec_axes(in_model[2]))
  return jax.shard_map(local, mesh=mesh, in_specs=(tokens, tokens, in_model, in_model,
                                                   out_model),
                       out_specs=tokens)(x, is_visual, *weights)


def _grouped(x, is_visual, gate, up, down, embed: tuple, mlp: tuple):
  """The grouped form on one device's tokens x [T, d]; weights stacked [text, visual] and
  split over the `embed` (fsdp) mesh axes, gathered here, and over the `mlp` (tensor) axes,
  whose partial outputs are summed."""
  def full_width(w, axis: int):
    return jax.lax.all_gather(w, embed, axis=axis, tiled=True) if embed else w
  tokens = x.shape[0]
  text_count = tokens - jnp.sum(is_visual, dtype=jnp.int32)
  order = jnp.argsort(is_visual, stable=True)              # sorted row -> token
  position = jnp.where(is_visual, text_count + jnp.cumsum(is_visual) - 1,
                       jnp.cumsum(~is_visual) - 1)         # token -> sorted row
  rows = row_ops.permute(x, order, position)
  sizes = jnp.stack([text_count, tokens - text_count])
  gate_up = jnp.concatenate([full_width(gate, 1), full_width(up, 1)], axis=-1)
  hidden = checkpoint_name(jax.lax.ragged_dot(rows, gate_up, sizes), GROUPED_HIDDEN)
  width = gate.shape[-1]
  out = jax.lax.ragged_dot(layers.swiglu(hidden[:, :width], hidden[:, width:]),
                           full_width(down, 2), sizes)
  if mlp:
    out = jax.lax.psum(out, mlp)
  return row_ops.permute(out, position, order)
