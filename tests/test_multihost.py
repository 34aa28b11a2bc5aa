"""Multi-host: two local processes x 4 CPU devices (gloo collectives) train, are preempted,
checkpoint and resume, and match one process with 8 devices."""
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import config_file, tiny_config, xla_flags
from test_checkpoint import wait_for_checkpoint
from test_sharding import moe_config
from mmpretrain import distributed
from mmpretrain.train.checkpoint import RunCheckpoints
from mmpretrain.train.loop import train
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run

STEPS, EVERY = 24, 4
PROCESSES, DEVICES_PER_PROCESS = 2, 4


def multihost_config(data_dir):
  """A small MoE with experts split 4 ways inside a process and the batch 2 ways across."""
  c = moe_config(tiny_config(data_dir))
  c.mesh.update({"data": 2, "fsdp": 1, "expert": 4, "tensor": 1})
  c.data.shards = 2                    # one per process here, two in the reference run
  c.train.num_steps, c.train.log_every = STEPS, 1
  c.checkpoint.every_steps = EVERY
  c.sample.captions = ["a handwritten digit three"]
  c.sample.images_per_caption = 1
  return c


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(config_path: str, workdir: str) -> list[subprocess.Popen]:
  """`mmpretrain train` as PROCESSES processes of one run, as a pod's hosts would run it."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(DEVICES_PER_PROCESS))
  address = f"localhost:{free_port()}"
  return [subprocess.Popen(
      [sys.executable, "-m", "mmpretrain.cli", "train", f"--config={config_path}",
       f"--workdir={workdir}", f"--coordinator_address={address}",
       f"--num_processes={PROCESSES}", f"--process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(PROCESSES)]


def finish(processes) -> list[str]:
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output
  return outputs


def losses_by_step(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


def final_params(workdir, config, tokenizer):
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  target = Trainer(Run(config), tokenizer.byte_lengths()).abstract_state()
  state = checkpoints.restore(STEPS, target)
  checkpoints.close()
  return jax.device_get(state.params)


@pytest.mark.slow      # two processes and a one-process reference run: minutes on 2 cores
def test_two_processes_are_preempted_resume_and_match_one_process(data_dir, tokenizer,
                                                                   tmp_path):
  config = multihost_config(data_dir)
  reference = str(tmp_path / "one_process")
  train(config, reference)                 # this process: 8 devices

  workdir = str(tmp_path / "two_processes")
  config_path = config_file(tmp_path, multihost_config, data_dir)
  processes = launch(config_path, workdir)
  wait_for_checkpoint(workdir, EVERY, processes[0])
  for p in processes:                      # a preempted pod: every host gets SIGTERM
    p.send_signal(signal.SIGTERM)
  outputs = finish(processes)
  assert "preempted: checkpoint saved" in outputs[0], outputs[0]
  stopped_at = RunCheckpoints(workdir, config.checkpoint).latest_step()
  assert EVERY <= stopped_at < STEPS
  finish(launch(config_path, workdir))     # the same command again resumes

  # Same program on the same mesh; only where the collectives run differs (gloo between
  # processes): reductions may be ordered differently, so agreement is to float32 rounding.
  want, got = losses_by_step(reference), losses_by_step(workdir)
  assert sorted(got) == list(range(STEPS))
  np.testing.assert_allclose([got[s] for s in range(STEPS)], [want[s] for s in range(STEPS)],
                             rtol=1e-5)
  # Parameters to 1e-5 absolute: Adam divides each step by the gradient's own scale, so
  # an element whose gradient is near zero turns rounding into a step-sized difference.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final_params(workdir, config, tokenizer), final_params(reference, config, tokenizer))


@pytest.mark.parametrize("args, message", [
    (("auto", None, 2, 0), "need --coordinator_address"),
    (("auto", "localhost:1", None, 0), "needs --num_processes and --process_id"),
    (("auto", "localhost:1", 2, 2), r"--process_id=2 must be in \[0, 2\)"),
    (("on", None, None, None), "--multihost='on': use one of"),
])
def test_incomplete_multihost_flags_are_refused_before_joining(args, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(*args)


def test_without_flags_off_a_tpu_vm_the_run_is_one_process():
  assert not distributed.on_tpu_vm()
  distributed.initialize("auto")
  assert jax.process_count() == 1


@pytest.mark.parametrize("libtpu, chips, on_vm", [
    (True, [], False), (True, ["/dev/accel0"], True), (False, ["/dev/accel0"], False)])
def test_a_tpu_host_is_libtpu_and_attached_chips(monkeypatch, libtpu, chips, on_vm):
  # libtpu alone (installed to compile for TPU topologies) must not make a CPU machine
  # try to join a pod, nor make JAX probe for TPUs.
  real_find_spec = distributed.importlib.util.find_spec
  monkeypatch.setattr(distributed.importlib.util, "find_spec",
                      lambda name: (object() if libtpu else None) if name == "libtpu"
                      else real_find_spec(name))
  monkeypatch.setattr(distributed.glob, "glob",
                      lambda pattern: [c for c in chips if c.startswith(pattern[:9])])
  assert distributed.on_tpu_vm() == on_vm
  assert distributed.host_only_libtpu() == (libtpu and not on_vm)


@pytest.mark.parametrize("environment, want", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, ("slurm", {"local_device_ids": None})),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, (None, None)),          # one task: alone
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
      "JAX_PROCESS_ID": "3"}, ("env", ("10.0.0.1:1234", 4, 3))),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, (None, None)),        # incomplete: alone
])
def test_gpu_hosts_join_from_what_launched_them(monkeypatch, environment, want):
  for key in ("SLURM_JOB_ID", "SLURM_NTASKS", *distributed.JAX_ENV):
    monkeypatch.delenv(key, raising=False)
  for key, value in environment.items():
    monkeypatch.setenv(key, value)
  joined = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda *a, **k: joined.append(k or a))
  monkeypatch.setattr(distributed.jax.config, "update", lambda *a: None)
  cluster, args = want
  assert distributed.detected_cluster() == cluster
  distributed.initialize("auto")
  assert joined == ([] if args is None else [args])
  joined.clear()
  distributed.initialize("off")
  assert not joined


def slurm_task(nodes: int, tasks_per_node: int, gpus_per_node: int, rank: int,
               gpus_per_task: int | None = None) -> dict[str, str]:
  """The environment srun gives task `rank` (--nodes, --ntasks-per-node, --gpus-per-node,
  optionally --gpus-per-task, which narrows CUDA_VISIBLE_DEVICES to the task's own)."""
  local = rank % tasks_per_node
  visible = (range(local * gpus_per_task, (local + 1) * gpus_per_task) if gpus_per_task
             else range(gpus_per_node))
  return {"SLURM_JOB_ID": "7", "SLURM_NTASKS": str(nodes * tasks_per_node),
          "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
          "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
          "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
          "SLURM_NODEID": str(rank // tasks_per_node), "SLURM_PROCID": str(rank),
          "SLURM_LOCALID": str(local), "SLURM_GPUS_ON_NODE": str(gpus_per_node),
          "CUDA_VISIBLE_DEVICES": ",".join(map(str, visible))}


@pytest.mark.parametrize("nodes, tasks, gpus, gpus_per_task", [
    (2, 8, 8, None), (2, 1, 8, None), (2, 8, 8, 1), (2, 2, 8, None)])
def test_every_gpu_of_every_slurm_node_is_driven_once(monkeypatch, nodes, tasks, gpus,
                                                      gpus_per_task):
  """Over all tasks of the job, what the project passes to jax.distributed.initialize
  drives each GPU of each node exactly once."""
  driven = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda **k: driven.append(k["local_device_ids"]))
  monkeypatch.setattr(distributed, "on_tpu_vm", lambda: False)
  for rank in range(nodes * tasks):
    environment = slurm_task(nodes, tasks, gpus, rank, gpus_per_task)
    monkeypatch.setattr(distributed.os, "environ", environment)
    distributed.initialize("auto")
  physical = []
  for rank, ids in enumerate(driven):
    visible = [int(g) for g in slurm_task(nodes, tasks, gpus, rank, gpus_per_task)[
        "CUDA_VISIBLE_DEVICES"].split(",")]
    physical += [(rank // tasks, visible[i]) for i in ids]
  assert sorted(physical) == [(n, g) for n in range(nodes) for g in range(gpus)]


def test_a_slurm_node_whose_gpus_do_not_split_among_its_tasks_is_refused():
  with pytest.raises(ValueError, match="3 tasks on this node and 8 visible GPUs"):
    distributed.slurm_local_device_ids(slurm_task(1, 3, 8, 0))
