"""The representation stages train like `mmpretrain train`: a stage stopped mid-run — by an
error raised inside its loop (a crash) or by SIGTERM (a preemption, which saves first) —
resumes from its newest checkpoint to the bitwise result of an uninterrupted run, a step
split over an 8-device data × fsdp mesh equals the one-device step, and two processes
(preempted, then resumed) train a stage like one."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from mmpretrain import sharding
from mmpretrain.data.images import stage_batches
from mmpretrain.encoders import contrastive, store
from mmpretrain.encoders.vit import VisionTransformer
from mmpretrain.stages import loop as loop_lib
from mmpretrain.stages.encoder import (encoder_loss, image_tower_config, text_tower_config,
                                       train_encoder)
from mmpretrain.stages.rae import TRAINED, make_rae_loss, rae_training, train_rae
from mmpretrain.tokenizers import rae as rae_lib
from mmpretrain.train.checkpoint import RunCheckpoints

from conftest import config_file, xla_flags
from test_checkpoint import wait_for_checkpoint
from test_multihost import DEVICES_PER_PROCESS, PROCESSES, finish, free_port
from test_rae import stage_config

STEPS, EVERY = 8, 4         # checkpoints after steps 4 and 8
STOP = 6                    # stopped before the 7th step: 6 steps done, 2 past a checkpoint


class Crash(Exception):
  """Raised inside a stage's loop: the process dies without saving."""


def resumable_config(data_dir, encoder_dir):
  c = stage_config(data_dir, STEPS)
  c.mesh.data, c.mesh.fsdp = 2, 4     # checkpoints of arrays split over 8 devices
  c.checkpoint.every_steps, c.train.log_every = EVERY, 1
  c.rae.encoder = encoder_dir
  c.rae.perceptual_weight = 0.0       # (its gradient is stopped: it changes nothing here)
  return c


@pytest.fixture(scope="module")
def encoder_dir(data_dir, tmp_path_factory):
  """A random-init image tower of stage_config's shapes: what the RAE freezes."""
  directory = str(tmp_path_factory.mktemp("encoder") / "encoder")
  tower = image_tower_config(stage_config(data_dir, 1))
  store.save_encoder(directory, VisionTransformer(tower, rngs=nnx.Rngs(0)))
  return directory


STAGES = {
    # stage -> (train it, read back the module it saved)
    "rae": (train_rae, lambda summary: rae_lib.load_rae(summary["representation"])),
    "encoder": (train_encoder, lambda summary: store.load_encoder(summary["encoder"])),
}


def saved_arrays(stage: str, summary: dict) -> dict:
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(STAGES[stage][1](summary))))


@pytest.fixture(scope="module")
def references():
  return {}


@pytest.fixture
def uninterrupted(stage, data_dir, encoder_dir, references, tmp_path_factory):
  """(summary, saved module's arrays) of `stage` run without a stop, once per module."""
  if stage not in references:
    workdir = str(tmp_path_factory.mktemp(f"uninterrupted_{stage}"))
    summary = STAGES[stage][0](resumable_config(data_dir, encoder_dir), workdir)
    references[stage] = summary, saved_arrays(stage, summary)
  return references[stage]


def stop_before_step(monkeypatch, step: int, how: str) -> None:
  """The next stage run stops before its `step`-th step (0-based) runs: `crash` raises
  there, `sigterm` sends this process SIGTERM, so that step runs and is saved."""
  real = loop_lib.StageTrainer.step
  calls = []
  def step_or_stop(self, *args):
    if len(calls) == step:
      if how == "crash":
        raise Crash
      os.kill(os.getpid(), signal.SIGTERM)
    calls.append(1)
    return real(self, *args)
  monkeypatch.setattr(loop_lib.StageTrainer, "step", step_or_stop)


@pytest.mark.parametrize("stage, how", [
    ("rae", "crash"), ("encoder", "sigterm"),
    pytest.param("rae", "sigterm", marks=pytest.mark.slow),
    pytest.param("encoder", "crash", marks=pytest.mark.slow)])
def test_a_stopped_stage_resumes_to_the_uninterrupted_result_bitwise(
    stage, how, data_dir, encoder_dir, uninterrupted, tmp_path, monkeypatch):
  config = resumable_config(data_dir, encoder_dir)
  workdir = str(tmp_path / "run")
  train = STAGES[stage][0]
  stop_before_step(monkeypatch, STOP, how)
  if how == "crash":
    with pytest.raises(Crash):
      train(config, workdir)
    saved = EVERY                       # the newest checkpoint; the steps after it are lost
  else:
    assert train(config, workdir)["preempted"]
    saved = STOP + 1                    # SIGTERM: the step under way, then a save
  assert RunCheckpoints(workdir, config.checkpoint).latest_step() == saved
  monkeypatch.undo()
  resumed = train(config, workdir)      # the same command again
  assert resumed["resumed_from"] == saved and not resumed["preempted"]
  summary, arrays = uninterrupted
  assert resumed["last"] == {**summary["last"], "steps_per_s": resumed["last"]["steps_per_s"]}
  jax.tree.map(np.testing.assert_array_equal, saved_arrays(stage, resumed), arrays)


def rae_module(config, tok):
  """(module, loss, trained parameters, batches) of train-rae."""
  training = rae_training(config, store.load_encoder(config.rae.encoder))
  return (training, make_rae_loss(config.rae), TRAINED,
          stage_batches(config, tok, config.rae.datasets, caption_len=1))


def encoder_module(config, tok):
  """(module, loss, trained parameters, batches) of train-encoder."""
  model = contrastive.DualEncoder(image_tower_config(config),
                                  text_tower_config(config, tok.vocab_size),
                                  rngs=nnx.Rngs(config.seed))
  return (model, encoder_loss, nnx.Param,
          stage_batches(config, tok, config.encoder.datasets,
                        caption_len=config.encoder.caption_len))


def three_steps(config, tok, build, mesh):
  """The losses and final trained parameters of three steps on `mesh`."""
  module, loss, wrt, batches = build(config, tok)
  trainer = loop_lib.StageTrainer(config, mesh, module, loss, wrt)
  state, frozen = trainer.init_state(module), trainer.frozen(module)
  losses = []
  for _ in range(3):
    batch = sharding.global_batch(next(batches), mesh, config.mesh.rules, config.data.batch_size)
    state, metrics = trainer.step(state, batch, frozen)
    losses.append(float(metrics["loss"]))
  return losses, state.params


@pytest.mark.parametrize("build", [rae_module, encoder_module], ids=["rae", "encoder"])
def test_a_step_split_over_data_and_fsdp_equals_the_one_device_step(
    build, data_dir, encoder_dir, tokenizer):
  config = resumable_config(data_dir, encoder_dir)
  config.mesh.data, config.mesh.fsdp = 1, 1
  one_losses, one_params = three_steps(config, tokenizer, build,
                                       sharding.make_mesh(config.mesh, jax.devices()[:1]))
  config.mesh.data, config.mesh.fsdp = 2, 4
  losses, params = three_steps(config, tokenizer, build, sharding.make_mesh(config.mesh))
  split = [p.sharding.spec for p in jax.tree.leaves(params) if "fsdp" in p.sharding.spec]
  assert len(split) >= len(jax.tree.leaves(params)) // 2      # fsdp holds weights in parts
  np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
  # atol: a parameter whose gradient is zero but for rounding (the text tower's key bias:
  # softmax ignores it) moves by rounding noise, which AdamW scales up to ~1e-7.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(params), jax.device_get(one_params))


def two_process_config(data_dir):
  """The encoder stage with a data shard per process: data 2 across the processes, fsdp 4
  inside each; long enough that SIGTERM after the first checkpoint lands mid-run."""
  c = resumable_config(data_dir, "")
  c.data.shards, c.train.num_steps = 2, 40
  return c


def launch_stage(verb: str, config_path: str, workdir: str) -> list[subprocess.Popen]:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(DEVICES_PER_PROCESS))
  address = f"localhost:{free_port()}"
  return [subprocess.Popen(
      [sys.executable, "-m", "mmpretrain.cli", verb, f"--config={config_path}",
       f"--workdir={workdir}", f"--coordinator_address={address}",
       f"--num_processes={PROCESSES}", f"--process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(PROCESSES)]


@pytest.mark.slow      # two processes and a one-process reference run: minutes on 2 cores
def test_two_processes_are_preempted_resume_and_train_a_stage_like_one(data_dir, tmp_path):
  config = two_process_config(data_dir)
  reference = train_encoder(config, str(tmp_path / "one_process"))     # 8 devices here
  workdir = str(tmp_path / "two_processes")
  config_path = config_file(tmp_path, two_process_config, data_dir)
  processes = launch_stage("train-encoder", config_path, workdir)
  wait_for_checkpoint(workdir, EVERY, processes[0])
  for p in processes:                      # a preempted pod: every host gets SIGTERM
    p.send_signal(signal.SIGTERM)
  assert "preempted: checkpoint saved" in finish(processes)[0]
  assert EVERY <= RunCheckpoints(workdir, config.checkpoint).latest_step() < 40
  finish(launch_stage("train-encoder", config_path, workdir))
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  # The same program on the same mesh; gloo may sum in another order: float32 rounding.
  np.testing.assert_allclose(summary["last"]["loss"], reference["last"]["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               saved_arrays("encoder", summary), saved_arrays("encoder", reference))
