"""Fine-tuning (`mmpretrain finetune`, config.train.init_from): a run starts from another
run's parameters with a fresh optimizer at step 0 and the other run's tokenizer, resumes
from its own checkpoints once it has them, and names a source that holds no checkpoint."""
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from conftest import ROOT, tiny_config
from mmpretrain import cli
from mmpretrain.data import pipeline
from mmpretrain.train.checkpoint import RunCheckpoints
from mmpretrain.train.loop import TrainLoop, train


def pretrain_config(data_dir: str):
  c = tiny_config(data_dir)
  c.train.num_steps, c.checkpoint.every_steps = 3, 0
  c.sample.captions = []
  return c


def finetune_config(data_dir: str, pretrained: str):
  """Other data (text alone), another seed, the tokenizer left to the pretrained run."""
  c = pretrain_config(data_dir)
  c.data.mixture = {"text": 1.0, "image_text": 0.0}
  c.data.tokenizer.path = ""
  c.seed, c.train.num_steps, c.train.init_from = 7, 3, pretrained
  return c


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  train(pretrain_config(data_dir), workdir)
  return workdir


def pretrained_params(data_dir, workdir):
  loop_config = pretrain_config(data_dir)
  loop = TrainLoop(loop_config, workdir)          # resumes the finished run: its last state
  loop.checkpoints.close()
  return loop.state


def leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_finetuned_run_starts_from_the_pretrained_parameters_with_a_fresh_optimizer(
    data_dir, pretrained, tmp_path):
  config = finetune_config(data_dir, pretrained)
  assert pipeline.tokenizer_path(config) == pipeline.tokenizer_path(pretrain_config(data_dir))
  source = pretrained_params(data_dir, pretrained)
  assert int(source.step) == 3
  loop = TrainLoop(config, str(tmp_path))
  loop.checkpoints.close()
  assert int(loop.state.step) == 0 and loop.start == 0
  assert leaves_equal(loop.state.params, source.params)
  fresh = loop.trainer.init_state(config.seed)
  assert leaves_equal(loop.state.opt_state, fresh.opt_state)
  assert not leaves_equal(source.opt_state, fresh.opt_state)     # the source's was trained
  assert not leaves_equal(fresh.params, source.params)


def test_a_finetuned_run_resumes_from_its_own_checkpoint(data_dir, pretrained, tmp_path):
  """… and, once finished, a re-run trains nothing and leaves its summary as it was."""
  config = finetune_config(data_dir, pretrained)
  train(config, str(tmp_path))
  summary = (tmp_path / "summary.json").read_text()
  assert train(config, str(tmp_path))["last"] is None
  assert (tmp_path / "summary.json").read_text() == summary
  checkpoints = RunCheckpoints(str(tmp_path), config.checkpoint)
  assert checkpoints.latest_step() == 3
  checkpoints.close()
  loop = TrainLoop(config, str(tmp_path))
  loop.checkpoints.close()
  assert loop.start == 3 and int(loop.state.step) == 3


def test_a_source_without_checkpoints_is_named(data_dir, pretrained, tmp_path):
  config = finetune_config(data_dir, pretrained)
  config.train.init_step = 1
  with pytest.raises(FileNotFoundError, match="has no checkpoint 1 in .*: point it at"):
    TrainLoop(config, str(tmp_path))


def test_finetune_refuses_a_missing_or_circular_source(tmp_path, capsys):
  try:
    with pytest.raises(SystemExit):
      cli.main(["mmpretrain", "finetune", "--config=configs/demo.py", f"--workdir={tmp_path}"])
  finally:
    flags.FLAGS.unparse_flags()
  assert "pass --config.train.init_from" in capsys.readouterr().err
  # config_flags registers --config.<key> once per process: this one runs on its own.
  circular = subprocess.run(
      [sys.executable, "-m", "mmpretrain.cli", "finetune", "--config=configs/demo.py",
       f"--workdir={tmp_path}", f"--config.train.init_from={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert circular.returncode != 0 and "is the pretrained run itself" in circular.stderr
