"""The paper's MoE arm on the 1B model: fine-grained experts (granularity 16: 64 experts
of 5632/16 = 352 hidden, 16 active per token, the compute of one dense FFN), per-modality
shared experts, sigmoid router with bias balancing, every layer after the first MoE.

No expert axis: every chip routes its own tokens through all 64 experts, whose weights
are gathered like the dense layers' (fsdp 32). At 8 rows of 4,096 tokens a chip, the
all-to-alls of expert parallelism would move 16 copies of every token each way, more
than the expert weights a layer (`--config.mesh.fsdp=4 --config.mesh.expert=8` compiles
that layout).

Capacity slots are filled by one-hot matmuls in groups of 128 consecutive tokens
(`capacity_impl=einsum`), cheaper than row gathers over whole rows, which a TPU reads a
tile at a time. Smaller groups drop more assignments (`moe_drop_rate` in the metrics
shows it; `--config.model.moe.capacity_impl=gather
--config.model.moe.capacity_group_tokens=0` is the row-group layout). The remat keeps
the experts' gate/up outputs (`remat_keep_hidden`), a faster step that still fits.
docs/paper_compile.md ("Why each run is laid out as it is") has the figures.

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
  m.capacity_impl, m.capacity_group_tokens = "einsum", 128
  m.remat_keep_hidden = True
  c.mesh.fsdp, c.mesh.expert = 32, 1
  return c
