"""Checkpoints: a killed or preempted run resumes to the bitwise-identical result, a state
moves to another mesh, a half-written checkpoint is never picked."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, config_file, tiny_config
from mmpretrain import sharding
from mmpretrain.data.pipeline import make_batches
from mmpretrain.train.checkpoint import (CHECKPOINT_DIR, CheckpointError, RunCheckpoints,
                                         export_params,
                                         load_params)
from mmpretrain.train.loop import NonFiniteLoss, train
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec

STEPS, EVERY = 60, 5


def resumable_config(data_dir):
  c = tiny_config(data_dir)
  c.train.num_steps, c.checkpoint.every_steps = STEPS, EVERY
  c.train.log_every = 10
  c.sample.captions = ["a handwritten digit three"]
  c.sample.images_per_caption = 1
  return c


def final_params(workdir, config, tokenizer):
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  assert checkpoints.latest_step() == STEPS
  state = checkpoints.restore(STEPS, trainer.abstract_state())
  checkpoints.close()
  return jax.device_get(state.params)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tokenizer, tmp_path_factory):
  """Run A: all STEPS steps in one go; its workdir and final parameters."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  config = resumable_config(data_dir)
  train(config, workdir)
  return workdir, final_params(workdir, config, tokenizer)


def start_run(config_path, workdir):
  return subprocess.Popen(
      [sys.executable, "-m", "mmpretrain.cli", "train", f"--config={config_path}",
       f"--workdir={workdir}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(workdir, step, process, timeout=300):
  path = os.path.join(workdir, CHECKPOINT_DIR, str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert process.poll() is None, process.stdout.read()
    assert time.time() < deadline, f"no checkpoint {path}"
    time.sleep(0.01)


# SIGTERM (the preemption path) also runs a final save; slow: the default suite keeps SIGKILL.
@pytest.mark.parametrize("stop", ["SIGKILL", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_interrupted_run_resumes_to_identical_parameters(stop, data_dir, tokenizer, tmp_path,
                                                          uninterrupted):
  """Run B: stopped right after its first checkpoint — killed outright, or preempted
  (SIGTERM: save after the current step and exit) —, then the same command again."""
  workdir = str(tmp_path / "run")
  process = start_run(config_file(tmp_path, resumable_config, data_dir), workdir)
  wait_for_checkpoint(workdir, EVERY, process)
  process.send_signal(getattr(signal, stop))
  output, _ = process.communicate(timeout=120)
  if stop == "SIGKILL":
    assert process.returncode == -signal.SIGKILL
  else:
    assert process.returncode == 0 and "preempted: checkpoint saved" in output, output
  config = resumable_config(data_dir)
  interrupted_at = RunCheckpoints(workdir, config.checkpoint).latest_step()
  assert EVERY <= interrupted_at < STEPS
  summary = train(config, workdir)
  assert summary["resumed_from"] == interrupted_at
  resumed = final_params(workdir, config, tokenizer)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted[1])   # bitwise


def test_rerunning_a_finished_run_trains_nothing(data_dir, tmp_path, uninterrupted):
  del uninterrupted
  config = resumable_config(data_dir)
  config.train.num_steps = config.checkpoint.every_steps = 3
  train(config, str(tmp_path))
  summary = train(config, str(tmp_path))
  assert summary["resumed_from"] == 3 and summary["last"] is None


def test_half_written_checkpoint_is_never_picked(config, tokenizer, tmp_path):
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  checkpoints = RunCheckpoints(str(tmp_path), config.checkpoint)
  batches = make_batches(config, tokenizer, row_spec(config))
  checkpoints.save(3, trainer.init_state(0), batches, config)
  checkpoints.close()
  # What a save killed midway leaves: orbax's temporary directory for the step.
  os.makedirs(tmp_path / CHECKPOINT_DIR / "7.orbax-checkpoint-tmp-1700000000")
  assert RunCheckpoints(str(tmp_path), config.checkpoint).latest_step() == 3


KILLED_DURING_SAVE = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {configs!r}]
from test_checkpoint import resumable_config
from mmpretrain.data.pipeline import load_tokenizer, make_batches
from mmpretrain.train.checkpoint import RunCheckpoints
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec
config = resumable_config({data_dir!r})
tok = load_tokenizer(config)
trainer = Trainer(Run(config), tok.byte_lengths())
state, batches = trainer.init_state(0), make_batches(config, tok, row_spec(config))
checkpoints = RunCheckpoints({workdir!r}, config.checkpoint)
checkpoints.save(1, state, batches, config)
checkpoints.manager.wait_until_finished()
checkpoints.save(2, state, batches, config)   # returns while the write goes on
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_during_an_async_save_resumes_from_the_previous_step(config, tokenizer,
                                                                     data_dir, tmp_path):
  script = KILLED_DURING_SAVE.format(tests=os.path.join(ROOT, "tests"),
                                     configs=os.path.join(ROOT, "configs"), data_dir=data_dir,
                                     workdir=str(tmp_path))
  process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=False)
  assert process.returncode == -signal.SIGKILL, process.stderr
  left = os.listdir(tmp_path / CHECKPOINT_DIR)
  assert any(name.startswith("2.orbax-checkpoint-tmp") for name in left), left  # mid-save
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  checkpoints = RunCheckpoints(str(tmp_path), config.checkpoint)
  step, state = checkpoints.restore_newest(trainer.abstract_state(),
                                           make_batches(config, tokenizer, row_spec(config)),
                                           fallback=False)
  assert step == 1 and int(state.step) == 0
  # the step saves again
  checkpoints.save(2, state, make_batches(config, tokenizer, row_spec(config)), config)
  checkpoints.close()
  assert RunCheckpoints(str(tmp_path), config.checkpoint).latest_step() == 2


@pytest.mark.parametrize("target_sizes", [None, (8, 1, 1, 1), (2, 2, 2, 1)])
def test_moe_state_saved_on_one_mesh_restores_on_another(config, tokenizer, tmp_path,
                                                         target_sizes):
  config.model.moe.update({"num_experts": 8, "dispatch": "capacity"})
  config.mesh.update({"data": 1, "fsdp": 2, "expert": 4, "tensor": 1})
  source = Trainer(Run(config, sharding.make_mesh(config.mesh)), tokenizer.byte_lengths())
  saved = source.init_state(0)
  batches = make_batches(config, tokenizer, row_spec(config))
  checkpoints = RunCheckpoints(str(tmp_path), config.checkpoint)
  checkpoints.save(1, saved, batches, config)
  checkpoints.close()

  mesh = None
  if target_sizes is not None:
    config.mesh.update(dict(zip(sharding.MESH_AXES, target_sizes)))
    mesh = sharding.make_mesh(config.mesh)
  target = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  restored = RunCheckpoints(str(tmp_path), config.checkpoint).restore(
      1, target.abstract_state(), make_batches(config, tokenizer, row_spec(config)))
  expected_layout = target.abstract_state()
  jax.tree.map(lambda r, e: r.sharding.is_equivalent_to(e.sharding, r.ndim) or pytest.fail(
      f"{r.sharding} != {e.sharding}"), restored, expected_layout)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params),
               jax.device_get(saved.params))
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(saved.rng))


def test_nonfinite_update_is_skipped_and_counted(config, tokenizer):
  config.loss.flow_weight = float("nan")
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  state = trainer.init_state(0)
  before = jax.device_get((state.params, state.opt_state))
  batch = {k: v for k, v in next(make_batches(config, tokenizer, row_spec(config))).items()
           if not k.startswith("skipped_")}
  state, metrics = trainer.step(state, batch)
  assert int(metrics["nonfinite"]) == 1 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get((state.params, state.opt_state)),
               before)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_policy_skips_or_stops_keeping_the_last_good_checkpoint(
    config, tmp_path, policy):
  config.loss.flow_weight = 1e39        # finite in the config, infinite in float32
  config.train.nonfinite, config.train.num_steps, config.train.log_every = policy, 4, 1
  config.optimizer.warmup_steps, config.checkpoint.every_steps = 1, 2
  if policy == "skip":
    summary = train(config, str(tmp_path))
    assert summary["last"]["nonfinite_updates_skipped"] == 4
    return
  with pytest.raises(NonFiniteLoss, match=r"by step 0 \(1 updates skipped\).*last good state"):
    train(config, str(tmp_path))
  assert RunCheckpoints(str(tmp_path), config.checkpoint).latest_step() is None


def test_exported_params_load_without_optimizer_state(data_dir, tokenizer, tmp_path,
                                                      uninterrupted):
  workdir, params = uninterrupted
  config = resumable_config(data_dir)
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  path = export_params(workdir, config.checkpoint, trainer.run)
  assert path.endswith(os.path.join("params", str(STEPS)))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(load_params(path, trainer.run)),
               params)
  with pytest.raises(FileNotFoundError, match="mmpretrain export-params"):
    load_params(str(tmp_path / "nowhere"), trainer.run)


def test_corrupt_newest_checkpoint_is_named_or_skipped_with_fallback(config, tmp_path):
  config.train.num_steps, config.checkpoint.every_steps = 4, 2
  config.sample.captions, config.sample.images_per_caption = ["a handwritten digit one"], 1
  train(config, str(tmp_path))
  newest = tmp_path / CHECKPOINT_DIR / "4"
  for path in (newest / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 1000:    # the array data, not metadata
      path.write_bytes(b"\0" * 16)
  config.train.num_steps = 6
  with pytest.raises(CheckpointError, match=r"checkpoints/4 cannot be restored.*fallback=True"):
    train(config, str(tmp_path))
  config.checkpoint.fallback = True
  assert train(config, str(tmp_path))["resumed_from"] == 2
  assert (tmp_path / CHECKPOINT_DIR / "4.unrestorable").is_dir()
  assert RunCheckpoints(str(tmp_path), config.checkpoint).latest_step() == 6
