"""Sweeps: IsoFLOP plans spend their budgets, ablation grids list their variants, a local
sweep runs, collects, and on a re-run skips what finished; the TPU launcher prints runs."""
import json
import os
import sys

import pytest

from conftest import config_file, tiny_config
from mmpretrain.scaling import flops, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs", "scaling"))
import isoflop  # pylint: disable=wrong-import-position


def isoflop_config(data_dir: str):
  c = tiny_config(data_dir)
  c.scaling = isoflop.scaling_section(budgets=(1e10, 3e10), widths=(32, 64), width_per_layer=32,
                                      head_dim=32, mlp_ratio=2.0, min_steps=4)
  c.scaling.count_batches = 2
  c.sample.captions, c.sample.images_per_caption = ["a handwritten digit one"], 1
  return c


def test_model_shapes_follow_the_width_rules():
  rules = isoflop.scaling_section((1e18,), (96,), width_per_layer=32, head_dim=32,
                                  mlp_ratio=3.0, min_steps=1)
  assert sweep.model_shape(rules, 96) == {
      "model.d_model": 96, "model.num_layers": 3, "model.num_heads": 3,
      "model.num_kv_heads": 3, "model.head_dim": 32, "model.mlp_dim": 288}
  with pytest.raises(ValueError, match="multiple of scaling.head_dim"):
    sweep.model_shape(rules, 100)


def test_each_isoflop_run_spends_its_budget(data_dir):
  config = isoflop_config(data_dir)
  runs = sweep.isoflop_plan(config, "cfg.py")
  assert [r.name for r in runs] == ["c1e10_d32", "c1e10_d64", "c3e10_d32", "c3e10_d64"]
  for run in runs:
    sized = sweep.with_overrides(config, run.overrides)
    assert sized.model.num_layers == run.plan["width"] // 32
    per_step = run.plan["flops"] / run.plan["steps"]
    assert per_step == pytest.approx((run.plan["text_flops"] + run.plan["visual_flops"])
                                     / run.plan["steps"])
    assert run.plan["flops"] == pytest.approx(run.plan["budget"], rel=0.5 / run.plan["steps"])
    assert run.plan["params"] == flops.matmul_params(sized).decoder
  config.scaling.min_steps = 10 ** 9
  with pytest.raises(ValueError, match="no run fits"):
    sweep.isoflop_plan(config, "cfg.py")


def test_an_ablation_grid_has_one_run_per_variant():
  runs = sweep.ablation_plan("configs/ablations/granularity.py:,runlocal")
  assert [r.config for r in runs] == [f"configs/ablations/granularity.py:{g},runlocal"
                                      for g in (1, 2, 4, 8, 16)]
  with pytest.raises(ValueError, match="nothing to sweep"):
    sweep.ablation_plan("configs/demo.py")


def test_tpu_launcher_prints_every_run_with_its_workdir(data_dir):
  lines = []
  runs = sweep.isoflop_plan(isoflop_config(data_dir), "configs/scaling/isoflop.py")
  sweep.run_sweep(runs, "gs://bucket/sweep", "tpu", {"data.batch_size": 16}, echo=lines.append)
  assert len(lines) == 4
  assert lines[0].startswith("tpu_scripts/launch.sh --config=configs/scaling/isoflop.py "
                             "--workdir=gs://bucket/sweep/runs/c1e10_d32 ")
  assert "--config.model.d_model=32" in lines[0] and lines[0].endswith(
      "--config.data.batch_size=16")


@pytest.mark.slow      # trains every run of a small grid, then resumes it
def test_a_local_sweep_runs_collects_and_resumes(data_dir, tmp_path):
  path = config_file(tmp_path, isoflop_config, data_dir)
  runs = sweep.isoflop_plan(isoflop_config(data_dir), path)[:2]
  out = str(tmp_path / "sweep")
  results = sweep.run_sweep(runs, out, echo=lambda line: None)
  assert [r["name"] for r in results] == ["c1e10_d32", "c1e10_d64"]
  for r in results:
    assert r["eval"]["text/text_loss"] > 0 and r["eval"]["image_text/flow_loss"] > 0
    assert r["final"]["text_loss"] > 0 and r["steps"] == next(
        run.plan["steps"] for run in runs if run.name == r["name"])
  # A re-run skips finished runs; a run that trained but was not collected is collected.
  lines = (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()
  (tmp_path / "sweep" / "results.jsonl").write_text(lines[0] + "\n")
  echoed = []
  again = sweep.run_sweep(runs, out, echo=echoed.append)
  assert echoed[0].endswith("c1e10_d32: done") and again == results
  assert json.loads((tmp_path / "sweep" / "plan.json").read_text())[1]["name"] == "c1e10_d64"
