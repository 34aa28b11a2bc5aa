"""MoE reference for the overhead benchmark: dense_ref with every FFN an MoE of equal
active FLOPs — 8 experts of hidden 768, top-2 (2 × 768 = dense_ref's 1536).
`get_config('fine')`: 32 experts of hidden 192, top-8 (granularity 4, same active FLOPs).

  python benchmarks/moe_overhead.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dense_ref  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = dense_ref.get_config()
  c.model.moe.num_experts, c.model.moe.experts_per_token = 8, 2
  c.model.moe.expert_mlp_dim = 768
  # One device holds the whole batch: one capacity group of all 8 rows (the default, one
  # row per group, is what a batch split one row per device needs, and drops more).
  c.model.moe.capacity_group_rows = c.data.batch_size
  if arg == "fine":
    c.model.moe.granularity = 4
  return c
