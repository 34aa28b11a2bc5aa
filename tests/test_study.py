"""`mmpretrain study`: the registry lists the paper's experiments; each arm's overrides on
its base reproduce the repository's own config for that arm and change nothing else; the
plan counts as scaling/flops.py does; the report draws and tabulates fake results and
marks what is missing; bad names fail in one line. Nothing trains or compiles."""
import json
import os

import pytest

from conftest import ROOT
from mmpretrain import cli
from mmpretrain import config as config_lib
from mmpretrain.scaling import flops, sweep
from mmpretrain.study import registry

PAPER = ("separation", "granularity", "sparsity", "shared_experts", "progression", "encoders",
         "data_composition", "vqa_data", "world_model_ratio", "isoflop_dense", "isoflop_moe")
# (runs, refused arms) of each experiment that is not a grid, at paper scale.
EXPECTED_RUNS = {"separation": (4, 0), "granularity": (5, 0), "sparsity": (6, 0),
                 "shared_experts": (3, 0), "progression": (5, 0), "encoders": (3, 3),
                 "data_composition": (5, 0), "vqa_data": (1, 3), "world_model_ratio": (5, 0)}


def run_main(capsys, *args):
  for name in cli.VERBS["study"].flags:   # absl keeps the last in-process parse's values
    cli.flags.FLAGS[name].unparse()
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["mmpretrain", "study", *args])
  out = capsys.readouterr()
  return exit_info.value.code, out.out, out.err


def load(config_arg: str):
  path, _, arg = config_arg.partition(":")
  return config_lib.load_config(os.path.join(ROOT, path), arg or None)


def flat(config) -> dict:
  """Dotted key -> value of a config (references resolved)."""
  found = {}
  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")
      else:
        found[prefix + key] = tuple(value) if isinstance(value, list) else value
  walk(config.to_dict(), "")
  return found


def apply(config, overrides: dict):
  """Sets each dotted key, which must exist, as `--config.<key>=<value>` would."""
  for key, value in overrides.items():
    *path, name = key.split(".")
    node = config
    for part in path:
      node = getattr(node, part)
    assert name in node, key
    setattr(node, name, value)
  return config


def test_every_experiment_is_listed_once(capsys):
  assert set(PAPER) <= set(registry.EXPERIMENTS)
  code, out, _ = run_main(capsys, "--list")
  assert code in (0, None)
  lines = out.strip().splitlines()
  assert [line.split()[0] for line in lines] == list(registry.EXPERIMENTS)
  for line, e in zip(lines, registry.EXPERIMENTS.values()):
    assert e.finding in line


def test_every_base_exists_and_every_metric_reads_a_results_line():
  for e in registry.EXPERIMENTS.values():
    assert set(e.bases) == set(registry.SCALES), e.name
    for base in e.bases.values():
      assert os.path.exists(os.path.join(ROOT, base.split(":")[0])), base
    for m in e.metrics:
      assert m.key.split(".", 1)[0] in ("eval", "final"), m.key


@pytest.mark.parametrize("name", sorted(registry.EXPERIMENTS))
@pytest.mark.parametrize("scale", registry.SCALES)
def test_arms_change_the_base_in_exactly_their_overrides(name, scale):
  e = registry.experiment(name)
  base = flat(load(e.bases[scale]))
  for arm in e.arms:
    overrides = arm.overrides(scale)
    changed = flat(apply(load(e.bases[scale]), overrides))
    differ = {k for k in changed if changed[k] != base.get(k)}
    assert differ == {k for k, v in overrides.items() if base[k] != v}, arm.name
    assert all(changed[k] == v for k, v in overrides.items()), arm.name


# The arm, its experiment's base, and the repository's config file that is that arm.
SAME_AS_CONFIG = [
    ("separation", "paper", "modality_ffn", "configs/paper/modality_ffn_1b.py"),
    ("separation", "paper", "mot", "configs/paper/mot_1b.py"),
    ("separation", "paper", "moe", "configs/paper/moe_1b.py"),
    ("encoders", "paper", "flux_vae", "configs/paper/vae_1b.py"),
    ("encoders", "paper", "pixels", "configs/paper/pixels_1b.py"),
    ("sparsity", "paper", "e1008", "configs/paper/moe_1b_1008.py"),
    ("separation", "mini", "modality_ffn", "configs/ablations/ffn_type.py:modality_ffn,runlocal"),
    ("granularity", "mini", "g8", "configs/ablations/granularity.py:8,runlocal"),
    ("sparsity", "mini", "e1008", "configs/ablations/total_experts.py:1008,runlocal"),
    ("shared_experts", "mini", "none", "configs/ablations/shared_experts.py:none,runlocal"),
    ("shared_experts", "mini", "global", "configs/ablations/shared_experts.py:global,runlocal"),
]


@pytest.mark.parametrize("name, scale, arm_name, reference", SAME_AS_CONFIG,
                         ids=[f"{n}-{s}-{a}" for n, s, a, _ in SAME_AS_CONFIG])
def test_an_arm_is_the_repository_config_for_it(name, scale, arm_name, reference):
  e = registry.experiment(name)
  arm = next(a for a in e.arms if a.name == arm_name)
  assert flat(apply(load(e.bases[scale]), arm.overrides(scale))) == flat(load(reference))


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_a_plan_has_a_run_per_runnable_arm_and_refuses_the_rest(plans, name):
  p = plans(name)
  assert (len(p.runs), len(p.refused)) == EXPECTED_RUNS[name]
  for run, arm in zip(p.runs, [a for a in p.experiment.arms if not a.needs]):
    assert (run.name, run.overrides, run.config) == (arm.name, arm.overrides("paper"),
                                                       p.experiment.bases["paper"])
    assert run.plan["topology"] == "v5p-64"     # dense_1b's, moe_1b's, world_model_1b's
  assert all(a.needs for a in p.refused)


def test_plan_flops_are_flops_py_for_the_runs_own_config(plans):
  """The MoE arm of `separation` is configs/paper/moe_1b.py: its FLOPs, tokens and
  parameters from that file by flops.py directly."""
  run = next(r for r in plans("separation").runs if r.name == "moe")
  c = load("configs/paper/moe_1b.py")
  tokens = c.train.num_steps * c.data.batch_size * c.data.seq_len
  assert run.plan["tokens"] == tokens
  assert run.plan["flops"] == pytest.approx(flops.train_flops_per_token(c) * tokens, rel=1e-12)
  assert run.plan["params"] == flops.matmul_params(c).decoder
  assert run.plan["total_params"] > run.plan["params_with_heads"] > run.plan["params"]


@pytest.mark.parametrize("name", ["granularity", "sparsity", "shared_experts"])
def test_expert_arms_multiply_the_same_parameters_per_token(plans, name):
  """Routers aside (d × E a MoE layer, the cost of having experts at all), every arm of an
  MoE axis runs the same parameters per token."""
  p = plans(name)
  active = set()
  for run in p.runs:
    m = apply(load(p.base), run.overrides).model
    routers = (m.num_layers - m.moe.first_dense_layers) * m.d_model * run.plan["total_experts"]
    active.add(run.plan["params"] - routers)
  assert len(active) == 1, active


def test_sparsity_grows_the_total_parameters(plans):
  totals = [r.plan["total_params"] for r in plans("sparsity").runs]
  assert totals == sorted(totals) and len(set(totals)) == len(totals)
  assert [r.plan["total_experts"] for r in plans("sparsity").runs] == [32, 64, 128, 256, 512,
                                                                        1008]


@pytest.mark.parametrize("name, budgets", [("isoflop_dense", (6e18, 6e19, 3e20, 6e20, 1e21)),
                                           ("isoflop_moe", (2e19, 6e19, 2e20, 6e20))])
def test_isoflop_runs_spend_the_papers_budgets(plans, name, budgets):
  p = plans(name)
  assert {r.plan["budget"] for r in p.runs} == set(budgets)
  assert len(p.runs) == {"isoflop_dense": 31, "isoflop_moe": 26}[name]    # docs/study.md
  base = load(p.base)
  for run in p.runs:
    c = apply(load(p.base), {k: v for k, v in run.overrides.items()
                             if k.startswith("model.")})
    assert c.model.num_layers == max(1, round(run.plan["width"] / base.scaling.width_per_layer))
    per_step = flops.train_flops_per_token(c) * c.data.batch_size * c.data.seq_len
    assert run.plan["steps"] == round(run.plan["budget"] / per_step)
    assert run.plan["steps"] >= base.scaling.min_steps
    assert run.plan["flops"] == pytest.approx(run.plan["steps"] * per_step, rel=1e-12)
    assert run.overrides["train.num_steps"] == run.plan["steps"]
    assert run.plan["topology"] == {"isoflop_dense": "v5p-64", "isoflop_moe": "v5p-128"}[name]


def test_plan_prints_runs_and_exits_3_on_a_refused_arm(capsys):
  code, out, err = run_main(capsys, "vqa_data", "--scale=mini", "--plan")
  assert code == 3
  rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
  assert {"none", "vqa_1pct", "vqa_5pct", "vqa_10pct"} <= set(rows)
  assert "refused: needs a VQA stream" in rows["vqa_1pct"]
  assert err.strip().count("\n") == 0
  assert "cannot run yet (vqa_1pct, vqa_5pct, vqa_10pct)" in err

  code, out, err = run_main(capsys, "separation", "--scale=mini", "--plan")
  assert code in (0, None) and not err
  assert "--config.model.modality_ffn=True" in out and "--config.model.mot=True" in out


@pytest.mark.parametrize("args, message", [
    (("sepration", "--plan"), "no experiment 'sepration': use one of separation, granularity"),
    (("separation", "--scale=huge", "--plan"), "no scale 'huge': use one of paper, mini"),
])
def test_a_bad_name_or_scale_is_one_line_naming_the_valid_ones(capsys, args, message):
  code, _, err = run_main(capsys, *args)
  assert code == 2
  assert err.strip().count("\n") == 0 and message in err


def test_an_override_of_a_key_the_base_lacks_names_the_key():
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.study.plan import arm_config
  with pytest.raises(config_lib.ConfigError, match='did you mean "model.moe.granularity"'):
    arm_config(load("configs/ablations/granularity.py:16,runlocal"),
               {"model.moe.granulrity": 8})


def test_study_wants_a_name_and_something_to_do(capsys):
  code, _, err = run_main(capsys, "--plan")
  assert code != 0 and "name one experiment" in err
  code, _, err = run_main(capsys, "separation")
  assert code != 0 and "say what to do" in err


def result_line(run, text_loss, flow_loss) -> dict:
  """A results.jsonl line as sweep.collect writes it for a finished run."""
  return {"name": run.name, "config": run.config, **run.plan,
          "final": {"text_loss": text_loss + 0.1},
          "eval": {"text/text_loss": text_loss, "image_text/flow_loss": flow_loss}}


def table_rows(markdown: str) -> list[list[str]]:
  lines = [line for line in markdown.splitlines() if line.startswith("| ")]
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_report_draws_and_tabulates_results_and_marks_a_missing_run(plans, capsys, tmp_path):
  p = plans("separation", "mini")
  runs = {r.name: r for r in p.runs}
  with open(tmp_path / sweep.RESULTS, "w", encoding="utf-8") as f:
    for name, losses in (("shared_ffn", (3.25, 0.5)), ("moe", (3.0, 0.375))):
      f.write(json.dumps(result_line(runs[name], *losses)) + "\n")
  code, out, _ = run_main(capsys, "separation", "--scale=mini", "--report",
                          f"--results={tmp_path}")
  assert code in (0, None)
  assert "2 of 4 runs reported; no results for modality_ffn, mot" in out
  with open(tmp_path / "separation.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = table_rows((tmp_path / "separation.md").read_text(encoding="utf-8"))
  assert table == [
      ["shared_ffn", "3.25", "0.5", "ok"],
      ["modality_ffn", "—", "—", "missing"],
      ["mot", "—", "—", "missing"],
      ["moe", "3", "0.375", "ok"]]

  # An arm that cannot run yet keeps its row, saying what it needs.
  p = plans("vqa_data", "mini")
  with open(tmp_path / sweep.RESULTS, "w", encoding="utf-8") as f:
    f.write(json.dumps(result_line(p.runs[0], 3.25, 0.5)) + "\n")
  run_main(capsys, "vqa_data", "--scale=mini", "--report", f"--results={tmp_path}")
  rows = {row[0]: row for row in table_rows(
      (tmp_path / "vqa_data.md").read_text(encoding="utf-8"))}
  assert rows["none"][-1] == "ok"
  assert rows["vqa_5pct"][-1] == "refused: needs " + p.refused[1].needs


def test_report_of_a_numeric_axis_and_results_of_another_study(plans, tmp_path):
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.study.report import write_report
  p = plans("world_model_ratio", "mini")
  with open(tmp_path / sweep.RESULTS, "w", encoding="utf-8") as f:
    for i, run in enumerate(p.runs[1:]):
      line = result_line(run, 3.0, 0.25)
      line["eval"]["action_video/flow_loss"] = 0.5 - 0.1 * i
      f.write(json.dumps(line) + "\n")
  report = write_report(p, str(tmp_path))
  assert os.path.getsize(report["figure"]) > 0
  table = table_rows(open(report["table"], encoding="utf-8").read())
  assert [row[:2] for row in table] == [["nav_0", "0"], ["nav_0.01", "0.01"],
                                        ["nav_0.05", "0.05"], ["nav_0.1", "0.1"],
                                        ["nav_0.25", "0.25"]]
  assert [row[2] for row in table] == ["—", "0.5", "0.4", "0.3", "0.2"]
  assert table[0][-1] == "missing"
  # A results file of another experiment is refused rather than read as this one's.
  other = plans("separation", "mini").runs[0]
  with open(tmp_path / sweep.RESULTS, "w", encoding="utf-8") as f:
    f.write(json.dumps({**result_line(other, 3.0, 0.25), "name": p.runs[0].name}) + "\n")
  with pytest.raises(ValueError, match="of experiment 'separation'"):
    write_report(p, str(tmp_path))
