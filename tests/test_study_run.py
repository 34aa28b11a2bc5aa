"""`mmpretrain study NAME --compile` and `--run`: runs that differ only in data, length or
mixture share one compile; a compile that fails or does not fit is a row and exit 3; the
TPU launcher prints one launch per run; finished runs are never redone."""
import json
import os

import pytest

from mmpretrain.scaling import sweep
from mmpretrain.study import compile as study_compile
from mmpretrain.study import registry
from mmpretrain.study.plan import plan
from test_aot import tpu_compile
from test_study import result_line, run_main


@pytest.mark.parametrize("name, steps", [("data_composition", 1), ("world_model_ratio", 1),
                                         ("separation", 4), ("sparsity", 6)])
def test_arms_differing_only_in_data_or_mixture_share_a_compile(plans, name, steps):
  p = plans(name)
  found = study_compile.distinct_steps(p)
  assert len(found) == steps
  assert sorted(run for step in found for run in step.runs) == sorted(r.name for r in p.runs)


def test_an_isoflop_grid_compiles_once_per_width(plans):
  p = plans("isoflop_dense")
  width = {r.name: r.plan["width"] for r in p.runs}
  found = study_compile.distinct_steps(p)
  assert len(found) == len(set(width.values())) < len(p.runs)
  for step in found:
    assert len({width[run] for run in step.runs}) == 1


def fake_compile(results: dict):
  """A stand-in for the `mmpretrain compile` process: the result named by the first run."""
  def compile_one(base, step, topology):
    return {"runs": list(step.runs), "topology": topology, "seconds": 12.0,
            **results[step.runs[0]]}
  return compile_one


FITS = {"fits": True, "per_device_bytes": 52.7e9, "hbm_headroom": 0.48,
        "cost_model_mfu": 0.58, "optimal_seconds": 0.91}


def test_a_failed_or_oversized_compile_is_a_row_and_exit_3(plans, capsys, monkeypatch):
  monkeypatch.setattr(study_compile, "compile_step", fake_compile({
      "shared_ffn": FITS, "modality_ffn": FITS,
      "mot": {"fits": False, "per_device_bytes": 120e9, "hbm_headroom": -0.2},
      "moe": {"error": "RESOURCE_EXHAUSTED: out of\nmemory"}}))
  code, out, err = run_main(capsys, "separation", "--scale=paper", "--compile")
  assert code == 3
  rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
  assert "| v5p-64 | 52.7 GB | 48% | 0.58 | 0.91 s | 12 s |" in rows["shared_ffn"]
  assert "does not fit: 120.0 GB" in rows["mot"]
  assert "failed: RESOURCE_EXHAUSTED: out of memory" in rows["moe"]
  assert err.strip().count("\n") == 0 and "mot; moe did not compile or fit" in err


def test_a_base_without_a_topology_asks_for_one(capsys):
  code, _, err = run_main(capsys, "separation", "--scale=mini", "--compile")
  assert code == 2 and "give one with --topology" in err


def test_the_tpu_launcher_prints_one_launch_per_run(capsys):
  code, out, _ = run_main(capsys, "separation", "--scale=paper", "--run", "--launcher=tpu",
                          "--out=gs://bucket/separation")
  assert code in (0, None)
  launches = [line for line in out.splitlines() if line.startswith("tpu_scripts/launch.sh")]
  assert len(launches) == 4
  assert any("--workdir=gs://bucket/separation/runs/mot" in line
             and "--config.model.mot=True" in line for line in launches)


def test_finished_runs_are_not_redone_and_the_report_is_written(plans, capsys, tmp_path):
  p = plans("separation", "mini")
  with open(tmp_path / sweep.RESULTS, "w", encoding="utf-8") as f:
    for i, run in enumerate(p.runs):
      f.write(json.dumps(result_line(run, 3.0 + i, 0.5)) + "\n")
  code, out, _ = run_main(capsys, "separation", "--scale=mini", "--run", f"--out={tmp_path}")
  assert code in (0, None)
  assert out.count(": done") == len(p.runs)
  assert "4 of 4 runs reported" in out
  assert os.path.exists(tmp_path / "separation.png")


def test_run_needs_an_out_directory(capsys):
  code, _, err = run_main(capsys, "separation", "--scale=mini", "--run")
  assert code != 0 and "--run needs --out" in err


@tpu_compile
def test_a_mini_study_compiles_for_a_tpu_slice(capsys):
  """The real `mmpretrain compile` process, for the one step data_composition's arms share."""
  code, out, _ = run_main(capsys, "data_composition", "--scale=mini", "--compile",
                          "--topology=v5p-8")
  assert code in (0, None)
  result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
  assert result["fits"] and result["runs"] == [r.name for r in
                                               plan(registry.experiment("data_composition"),
                                                    "mini").runs]
