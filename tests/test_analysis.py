"""Expert specialization: categories and correlations from hand-made routing counts, the
routing log a run writes, and `mmpretrain analyze-experts` on it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmpretrain.analysis import experts as analysis
from mmpretrain.train import routing


def counts_for(text, understanding, generation):
  return np.array([[text, understanding, generation]], np.float64)   # [1 layer, kinds, E]


def test_categories_use_modality_normalized_affinity():
  # 4 experts. Text has 10× the assignments of vision, so raw shares would call every used
  # expert "text"; the affinity compares each expert's share of text with its share of vision.
  text = [500, 400, 100, 0]
  understanding = [0, 5, 20, 0]
  generation = [0, 5, 20, 0]
  (row,) = routing.specialization(counts_for(text, understanding, generation), threshold=0.8)
  # shares: text (.5, .4, .1, 0), vision (0, .2, .8, 0) -> affinity (1, .67, .11, unused)
  assert row["text_experts"] == 0.25
  assert row["multimodal_experts"] == 0.25
  assert row["vision_experts"] == 0.25
  assert row["unused_experts"] == 0.25
  assert row["understanding_generation_r"] == pytest.approx(1.0)


def test_understanding_generation_correlation_is_pearson_over_experts():
  rng = np.random.default_rng(0)
  und, gen = rng.integers(0, 50, 16).astype(float), rng.integers(0, 50, 16).astype(float)
  (row,) = routing.specialization(counts_for(np.ones(16), und, gen))
  assert row["understanding_generation_r"] == pytest.approx(np.corrcoef(und, gen)[0, 1])
  (row,) = routing.specialization(counts_for(np.ones(4), np.zeros(4), np.ones(4)))
  assert np.isnan(row["understanding_generation_r"])          # no understanding tokens at all


def test_threshold_outside_its_range_is_refused():
  with pytest.raises(ValueError, match="threshold must lie in"):
    routing.specialization(counts_for([1], [1], [1]), threshold=0.4)


def test_routing_log_appends_windows_and_resumes(tmp_path):
  log = routing.RoutingLog(str(tmp_path), moe_layers=[1, 3], threshold=0.8)
  step_counts = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  log.add(step_counts)
  log.add(step_counts)
  scalars = log.flush(9)
  assert set(scalars) == {f"moe_layer{l:02d}/{name}" for l in (1, 3) for name in (
      "text_experts", "vision_experts", "multimodal_experts", "unused_experts",
      "understanding_generation_r")}
  resumed = routing.RoutingLog(str(tmp_path), moe_layers=[1, 3], threshold=0.8)
  resumed.add(step_counts)
  resumed.flush(19)
  counts, layers, steps = analysis.load_routing(str(tmp_path), windows=0)
  assert steps == [9, 19] and list(layers) == [1, 3]
  np.testing.assert_array_equal(counts, 3 * step_counts)
  counts, _, steps = analysis.load_routing(str(tmp_path), windows=1)
  assert steps == [19]
  np.testing.assert_array_equal(counts, step_counts)


def test_analyze_experts_without_routing_counts_says_what_writes_them(tmp_path):
  with pytest.raises(FileNotFoundError, match="model.moe.num_experts > 0"):
    analysis.analyze(str(tmp_path))


def test_analyze_experts_command_writes_table_and_figure(tmp_path):
  rng = np.random.default_rng(1)
  log = routing.RoutingLog(str(tmp_path), moe_layers=[0, 1, 2], threshold=0.8)
  log.add(rng.integers(0, 100, (3, 3, 8)).astype(np.float32))
  log.flush(4)
  result = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "analyze-experts",
                           f"--workdir={tmp_path}", "--windows=0"],
                          capture_output=True, text=True, check=True)
  assert "und~gen r" in result.stdout
  table = json.load(open(os.path.join(tmp_path, "analysis", "experts.json")))
  assert [row["layer"] for row in table["layers"]] == [0, 1, 2]
  for row in table["layers"]:
    assert sum(row[f"{c}_experts"] for c in routing.CATEGORIES) == pytest.approx(1.0)
  assert os.path.getsize(os.path.join(tmp_path, "analysis", "experts.png")) > 0
