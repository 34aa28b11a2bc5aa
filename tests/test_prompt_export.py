"""`sample --prompts`: a benchmark's prompts drawn into the layouts GenEval and DPG-Bench
read, split over hosts, re-runs skipping finished prompts and redrawing the same images."""
import json
import os

import numpy as np
import pytest
from absl import flags
from PIL import Image

from conftest import ROOT, tiny_config
from mmpretrain import cli
from mmpretrain.generate import prompt_export
from mmpretrain.run import Run
from mmpretrain.train.step import Trainer

GENEVAL = [{"tag": "single_object", "include": [{"class": "digit", "count": 1}],
            "prompt": "a handwritten digit three"},
           {"tag": "counting", "include": [{"class": "digit", "count": 2}], "prompt": "seven"},
           {"tag": "colors", "include": [], "prompt": "a handwritten digit one"}]


@pytest.fixture(scope="module")
def model(data_dir, tokenizer):
  run = Run(tiny_config(data_dir))
  return run, tokenizer, Trainer(run, tokenizer.byte_lengths()).init_state(0).params


def write_geneval(tmp_path) -> str:
  path = tmp_path / "evaluation_metadata.jsonl"
  path.write_text("".join(json.dumps(m) + "\n" for m in GENEVAL))
  return str(path)


def export(model, prompts_path, out, layout="auto", per_prompt=2, **where):
  run, tok, params = model
  layout = prompt_export.resolve_layout(layout, prompts_path)
  writer = prompt_export.make_layout(layout, out, per_prompt)
  return prompt_export.export_prompts(run, tok, params, prompt_export.read_prompts(prompts_path),
                                      writer, per_prompt, 2, seed=0, **where)


def pixels(path) -> np.ndarray:
  return np.asarray(Image.open(path))


def test_geneval_layout_and_a_rerun_redraws_only_what_is_missing(model, tmp_path):
  prompts, out = write_geneval(tmp_path), str(tmp_path / "geneval")
  counts = export(model, prompts, out)
  assert counts == {"prompts": 3, "batches_drawn": 2, "prompts_written_here": 3,
                    "prompts_finished_before": 0}
  assert sorted(os.listdir(out)) == ["00000", "00001", "00002"]
  for index, metadata in enumerate(GENEVAL):
    folder = os.path.join(out, f"{index:05d}")
    with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
      assert [json.loads(line) for line in f] == [metadata]
    assert sorted(os.listdir(os.path.join(folder, "samples"))) == ["0000.png", "0001.png"]
  first = pixels(os.path.join(out, "00002", "samples", "0001.png"))
  assert first.shape[:2] == (16, 16)
  os.remove(os.path.join(out, "00002", "samples", "0001.png"))
  again = export(model, prompts, out)
  assert again == {"prompts": 3, "batches_drawn": 1, "prompts_written_here": 1,
                   "prompts_finished_before": 2}
  np.testing.assert_array_equal(pixels(os.path.join(out, "00002", "samples", "0001.png")),
                                first)


def test_dpg_layout_is_a_square_grid_per_prompt_file(model, tmp_path):
  folder = tmp_path / "prompts"
  folder.mkdir()
  for name, text in (("a_three", "a handwritten digit three"), ("b_seven", "seven")):
    (folder / f"{name}.txt").write_text(text + "\n")
  out = str(tmp_path / "dpg")
  export(model, str(folder), out, per_prompt=4)
  assert sorted(os.listdir(out)) == ["a_three.png", "b_seven.png"]
  grid = pixels(os.path.join(out, "a_three.png"))
  assert grid.shape[:2] == (32, 32)                        # 2 × 2 images of 16²
  assert not np.array_equal(grid[:16, :16], grid[:16, 16:])  # four draws, not one repeated
  with pytest.raises(ValueError, match="must be a square"):
    prompt_export.make_layout("dpg", out, 3)


def test_hosts_write_disjoint_prompts_that_make_the_whole_set(model, tmp_path):
  prompts = write_geneval(tmp_path)
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  export(model, prompts, whole)
  written = [export(model, prompts, split, process=p, processes=2)["prompts_written_here"]
             for p in (0, 1)]
  assert written == [2, 1]                     # prompts 0 and 2, then prompt 1
  for index in range(3):
    for k in range(2):
      name = os.path.join(f"{index:05d}", "samples", f"{k:04d}.png")
      np.testing.assert_array_equal(pixels(os.path.join(split, name)),
                                    pixels(os.path.join(whole, name)))


@pytest.mark.parametrize("content, problem", [
    ('{"prompt": "three"}\nnot json\n', r"evaluation_metadata.jsonl:2: not a JSON object"),
    ('{"prompt": 3}\n', r"evaluation_metadata.jsonl:1: not a JSON object with a string"),
])
def test_a_bad_prompt_line_is_named(tmp_path, content, problem):
  path = tmp_path / "evaluation_metadata.jsonl"
  path.write_text(content)
  with pytest.raises(prompt_export.BadPrompts, match=problem):
    prompt_export.read_prompts(str(path))


def test_the_cli_names_a_bad_prompt_file_in_one_line(tmp_path, capsys):
  path = tmp_path / "evaluation_metadata.jsonl"
  path.write_text("not json\n")
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["mmpretrain", "sample", f"--config={ROOT}/configs/demo.py",
                f"--workdir={tmp_path}", f"--prompts={path}"])
  finally:
    flags.FLAGS.unparse_flags()           # absl keeps a run's flags for the next one
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f"mmpretrain sample: error: {path}:1: not a JSON object with a string `prompt`; fix "
      "or remove the line")
