"""One FFN layer's forward + backward, timed on this machine's first device (a GPU or TPU
host): the measurements behind the `auto` choices of `model.moe.dispatch` and
`model.modality_ffn_impl` on an accelerator.

  python benchmarks/ffn_local.py [--tokens=32768] [--repeats=10] [--variants=a,b]

Prints one JSON line: milliseconds per forward + backward (gradients of the input and of
every parameter, no remat) of
  dense                    configs/paper/dense_1b.py's SwiGLU (d 2048, hidden 5632);
  moe_capacity_einsum      configs/paper/moe_1b.py's MoE FFN (64 experts of 352 hidden,
                           16 active, per-modality shared experts) with the config's
                           one-hot slot filling in groups of 128 tokens;
  moe_capacity_gather      the same with row gathers over groups of whole rows;
  moe_dropless             the same, dropless through jax.lax.ragged_dot;
  modality_select          configs/paper/modality_ffn_1b.py's text and visual SwiGLUs,
                           both on every token, the token's own output kept;
  modality_grouped         the same, tokens sorted by modality, jax.lax.ragged_dot;
and each one's ratio to dense; a variant that fails to compile or run (out of memory)
gives `<variant>_error` instead. Tokens are rows of 4,096 (one v5p chip's share of the
paper's batch by default), a quarter text and the rest visual, in runs like a packed row.
XLA:GPU lowers ragged_dot by default as one dense matmul per group over every row;
`XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true` (or `..._grouped_gemm`) in
the environment times its other lowerings. `--smoke`: tiny shapes on this machine's CPU.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from mmpretrain.batch import TOKEN_KINDS, is_visual  # pylint: disable=wrong-import-position
from mmpretrain.config import load_config  # pylint: disable=wrong-import-position
from mmpretrain.model import layers, modality_ffn, moe  # pylint: disable=wrong-import-position
import smoke  # pylint: disable=wrong-import-position,wrong-import-order

ROW = 4096                  # tokens a row (the paper configs' data.seq_len)
TEXT_SHARE = 0.25           # of each row: a caption run, then visual tokens
MOE = {"capacity_einsum": {"dispatch": "capacity", "capacity_impl": "einsum",
                           "capacity_group_tokens": 128},
       "capacity_gather": {"dispatch": "capacity", "capacity_impl": "gather",
                           "capacity_group_tokens": 0},
       "dropless": {"dispatch": "dropless"}}
VARIANTS = ("dense", *(f"moe_{name}" for name in MOE), "modality_select", "modality_grouped")


def token_kinds(tokens: int, row: int) -> np.ndarray:
  """Per row: text, then visual understanding and visual generation halves."""
  text = int(row * TEXT_SHARE)
  one = np.full(row, TOKEN_KINDS.index("visual_generation"), np.int32)
  one[:text] = TOKEN_KINDS.index("text")
  one[text:text + (row - text) // 2] = TOKEN_KINDS.index("visual_understanding")
  return np.tile(one, tokens // row)


def layer_loss(variant: str, paper: dict, rows: int):
  """(loss(params, x, kinds), params) for one FFN of `variant`."""
  if variant == "dense" or variant.startswith("modality_"):
    model = paper["modality_ffn_1b"].model
    text = layers.SwiGLU(model, rngs=nnx.Rngs(0))
    visual = layers.SwiGLU(model, rngs=nnx.Rngs(1))
    module = text if variant == "dense" else (text, visual)
  else:
    model = paper["moe_1b"].model.copy_and_resolve_references()
    model.moe.update(MOE[variant.removeprefix("moe_")])
    module = moe.MoE(model, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(module)

  def forward(module, x, kinds):
    if variant == "dense":
      return module(x)
    if variant.startswith("modality_"):
      return modality_ffn.apply(*module, x, is_visual(kinds),
                                variant.removeprefix("modality_"))
    return module(x, kinds, rows)[0]

  def loss(params, x, kinds):
    out = forward(nnx.merge(graphdef, params), x, kinds)
    return jnp.sum(jnp.square(out.astype(jnp.float32)))
  return loss, params, jnp.dtype(model.dtype), model.d_model


def time_variant(variant: str, paper: dict, tokens: int, row: int, repeats: int) -> float:
  """Median milliseconds of one jitted forward + backward after compiling and a warm-up."""
  loss, params, dtype, d_model = layer_loss(variant, paper, tokens // row)
  x = jax.random.normal(jax.random.key(0), (tokens, d_model), dtype)
  kinds = jnp.asarray(token_kinds(tokens, row))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  for _ in range(2):
    jax.block_until_ready(grad(params, x, kinds))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(grad(params, x, kinds))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tokens", type=int, default=8 * ROW, help="tokens in the layer")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, of {', '.join(VARIANTS)}")
  smoke.add_flag(parser)
  args = parser.parse_args()
  variants = args.variants.split(",")
  if unknown := set(variants) - set(VARIANTS):
    raise SystemExit(f"--variants: unknown {sorted(unknown)}; pick from {VARIANTS}")
  paper = {name: load_config(os.path.join(ROOT, f"configs/paper/{name}.py"))
           for name in ("moe_1b", "modality_ffn_1b")}
  tokens, row = args.tokens, ROW
  if args.smoke:
    paper = {name: smoke.tiny(c) for name, c in paper.items()}
    tokens, row, args.repeats = 256, 128, 1
  if tokens % row:
    raise SystemExit(f"--tokens={tokens} must be whole rows of {row}")
  device = jax.devices()[0]
  out = {"device": device.device_kind, "tokens": tokens,
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  for variant in variants:
    try:
      out[f"{variant}_ms"] = round(time_variant(variant, paper, tokens, row, args.repeats), 3)
    except jax.errors.JaxRuntimeError as error:     # out of memory is a finding, not a crash
      out[f"{variant}_error"] = str(error).splitlines()[0][:200]
  if "dense_ms" in out:
    for variant in variants:
      if f"{variant}_ms" in out:
        out[f"{variant}_vs_dense"] = round(out[f"{variant}_ms"] / out["dense_ms"], 3)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
