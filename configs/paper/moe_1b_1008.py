"""The widest arm of the paper's expert-count sweep on the 1B model: 1,008 experts of 352
hidden (63 × granularity 16), 16 active per token, so the active compute equals the
64-expert arm's (configs/paper/moe_1b.py) and only the parameters grow, here to ~35B.

Experts sharded over an expert axis of 8 (fsdp 4 × expert 8): gathering every expert's
weights on every chip costs as much as the all-to-alls of expert parallelism, and the
expert axis keeps that traffic flat as the expert count grows.

Slots are filled by row gathers: with 1,008 experts every expert keeps at least k = 16
slots per group, so one-hot dispatch matmuls (the 64-expert arm's) would cost
2·1008·16·d FLOPs a token each, more than the experts themselves. A capacity group is a
chip's 8 rows (32,768 tokens, 520 assignments an expert when balanced), which lets a
capacity factor of 1.1 drop less than 1.25 does over groups of one row, in fewer slots.
The experts' gate/up outputs are kept for the backward, as in moe_1b.py
(`remat_keep_hidden`), which fits once the routers' f32 logits are recomputed rather
than kept. docs/paper_compile.md ("Why each run is laid out as it is") has the figures.

  mmpretrain compile --config=configs/paper/moe_1b_1008.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_1b  # pylint: disable=wrong-import-position

TOPOLOGY = moe_1b.TOPOLOGY


def get_config(arg=None):
  c = moe_1b.get_config(arg)
  c.model.moe.num_experts = 63
  c.model.moe.capacity_impl, c.model.moe.capacity_group_tokens = "gather", 0
  c.model.moe.capacity_group_rows, c.model.moe.capacity_factor = 8, 1.1
  c.mesh.fsdp, c.mesh.expert = 4, 8
  return c
