"""The paper's MoE arm on the 1B model: fine-grained experts (granularity 16: 64 experts
of 5632/16 = 352 hidden, 16 active per token, the compute of one dense FFN), per-modality
shared experts, sigmoid router with bias balancing, every layer after the first MoE.

No expert axis: every chip routes its own tokens through all 64 experts, whose weights
are gathered like the dense layers' (fsdp 32). At 8 rows of 4,096 tokens a chip, the
all-to-alls of expert parallelism would move 16 copies of every token each way, against
0.3 GB of expert weights a layer (the cost model: 78 against 51 ms for one MoE FFN's
forward and backward on an expert axis of 8 and on none; `--config.mesh.fsdp=4
--config.mesh.expert=8` compiles the former).

  mmpretrain compile --config=configs/paper/moe_1b.py --topology=v5p-64
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dense_1b  # pylint: disable=wrong-import-position

TOPOLOGY = dense_1b.TOPOLOGY


def get_config(arg=None):
  c = dense_1b.get_config(arg)
  m = c.model.moe
  m.num_experts, m.experts_per_token, m.granularity = 4, 1, 16
  m.shared_experts, m.router = "per_modality", "sigmoid"
  m.first_dense_layers = 1
  c.mesh.fsdp, c.mesh.expert = 32, 1
  return c
