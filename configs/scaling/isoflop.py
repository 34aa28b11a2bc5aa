"""IsoFLOP grid of the unified model (text + image–text), for a pod.

`mmpretrain sweep` expands budgets × widths into runs: each width becomes a model by the
rules below (depth = width / width_per_layer, heads of head_dim, FFN mlp_ratio × width),
and each (budget, model) a run of as many steps as spend the budget in model FLOPs
(mmpretrain/scaling/flops.py, on the token counts of this config's own data mixture).
Then `mmpretrain fit` fits N_opt ∝ C^a and D_opt ∝ C^b per modality.

  mmpretrain sweep --config=configs/scaling/isoflop.py --out=gs://BUCKET/isoflop --launcher=tpu
  mmpretrain fit --results=DIR/results.jsonl
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import base  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position


def scaling_section(budgets, widths, *, width_per_layer: int, head_dim: int,
                    mlp_ratio: float, min_steps: int):
  s = ml_collections.ConfigDict()
  s.budgets = tuple(float(b) for b in budgets)   # training FLOPs (model FLOPs) per run
  s.widths = tuple(widths)                       # d_model of each size on the grid
  s.width_per_layer = width_per_layer            # depth = round(width / this), ≥ 1
  s.head_dim = head_dim
  s.mlp_ratio = mlp_ratio
  s.min_steps = min_steps                        # a size that gets fewer steps is left out
  s.warmup_fraction = 0.05
  s.checkpoints_per_run = 4
  s.count_batches = 4                            # batches averaged for tokens per step
  return s


def get_config(arg=None):
  c = base.get_config(arg)
  c.data.seq_len, c.data.batch_size = 2048, 256
  c.data.mixture = {"text": 0.5, "image_text": 0.5, "video": 0.0, "action_video": 0.0}
  c.optimizer.schedule = "cosine"
  c.eval.batches = 16
  c.scaling = scaling_section(
      budgets=(1e18, 3e18, 1e19, 3e19, 1e20),
      widths=(256, 384, 512, 640, 768, 1024, 1280, 1536),
      width_per_layer=64, head_dim=64, mlp_ratio=4.0, min_steps=500)
  return c
