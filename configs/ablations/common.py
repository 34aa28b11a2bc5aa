"""The shared setting of the MoE ablations (not a config to run by itself).

A dense model of d 512, 8 layers, SwiGLU 1536 on text + image–text, and the paper's MoE
recipe at the same active FLOPs per token: a per-modality shared expert of hidden 768 plus
routed experts whose k · hidden also make 768 (fine-grained: granularity 4, 8×4 experts of
192, 4 active). Each ablation file changes one axis of it.

`arg` is "<variant>" or "<variant>,runlocal"; runlocal shrinks the model and the run (all
hidden sizes ÷ 4, so every granularity still divides) for a CPU smoke run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import base  # pylint: disable=wrong-import-position

SHARED_HIDDEN = 768     # the always-on expert(s)
ROUTED_HIDDEN = 768     # k · expert hidden, before granularity


def parse(arg, variants, default):
  """'variant[,runlocal]' -> (variant, runlocal); unknown variants name the choices."""
  parts = (arg or default).split(",")
  variant, runlocal = parts[0], parts[1:] == ["runlocal"]
  if variant not in variants or parts[1:] not in ([], ["runlocal"]):
    raise ValueError(f"config arg {arg!r}: use one of {list(variants)}, optionally "
                     "followed by ',runlocal'")
  return variant, runlocal


def moe_recipe(c):
  """The MoE baseline of the ablations on config `c` (in place)."""
  moe = c.model.moe
  moe.num_experts, moe.experts_per_token, moe.granularity = 8, 1, 4
  moe.expert_mlp_dim = c.model.mlp_dim // 2
  moe.shared_experts, moe.shared_mlp_dim = "per_modality", c.model.mlp_dim // 2
  return c


def get_base(runlocal: bool):
  c = base.get_config()
  c.data.seq_len, c.data.batch_size = 1024, 64
  c.data.mixture = {"text": 0.5, "image_text": 0.5, "video": 0.0, "action_video": 0.0}
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 512, 8, 2 * ROUTED_HIDDEN
  c.model.num_heads = c.model.num_kv_heads = 8
  c.train.num_steps, c.optimizer.warmup_steps = 20_000, 1_000
  if runlocal:
    c.data.seq_len, c.data.batch_size = 256, 8
    c.model.d_model, c.model.num_layers, c.model.mlp_dim = 128, 2, 2 * ROUTED_HIDDEN // 4
    c.model.num_heads = c.model.num_kv_heads = 2
    c.train.num_steps, c.optimizer.warmup_steps = 50, 5
  return c
