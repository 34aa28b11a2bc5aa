"""Processes of a multi-host run: joining it, and agreeing to stop when preempted.

On TPU VMs `jax.distributed.initialize()` finds the pod's other hosts by itself; elsewhere
(GPU clusters, or several local processes on CPU exercising real multi-host code) the
coordinator, the process count and this process's index come from flags. CPU processes
exchange collectives through gloo.
"""
import glob
import importlib.util
import os
import signal

import jax
from jax.experimental import multihost_utils

MODES = ("auto", "off")


def on_tpu_vm() -> bool:
  """A TPU host: libtpu installed and TPU chips attached (/dev/accel* on v4 and v5p,
  /dev/vfio/N on v5e and v6e). libtpu alone is not enough: it also compiles for TPU
  topologies on CPU machines (`mmpretrain compile`)."""
  return (importlib.util.find_spec("libtpu") is not None
          and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")))


def host_only_libtpu() -> bool:
  """libtpu installed where no TPU chip is attached (it is there to compile for TPU
  topologies): JAX should not probe for TPUs at start-up, which logs errors and waits on
  metadata servers. GPU plugins count as accelerators too."""
  gpu = any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                    "jax_rocm60_plugin"))
  return importlib.util.find_spec("libtpu") is not None and not on_tpu_vm() and not gpu


def skip_tpu_probe_on_a_host_only_libtpu() -> None:
  """Runs JAX on the CPU where libtpu is only there to compile (see host_only_libtpu),
  unless JAX_PLATFORMS says otherwise. Call before JAX's first backend use."""
  if "JAX_PLATFORMS" not in os.environ and host_only_libtpu():
    jax.config.update("jax_platforms", "cpu")     # jax read the environment on import


# A process started by a launcher that sets these (torchrun-like scripts, Kubernetes jobs).
JAX_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def detected_cluster() -> str | None:
  """How this process was started as one of several, if it was: 'tpu' (a TPU VM's
  workers), 'slurm' (srun with several tasks), 'env' (the JAX_ENV variables); else None."""
  if on_tpu_vm():
    return "tpu"
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if all(key in os.environ for key in JAX_ENV):
    return "env"
  return None


def _tasks_per_node(env) -> list[int]:
  """Tasks on each node of the step: SLURM writes '8(x2)' or '2,1,1'."""
  counts = []
  for part in env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "")).split(","):
    if part:
      count, _, repeat = part.partition("(x")
      counts += [int(count)] * int(repeat.rstrip(")") or 1)
  return counts


def slurm_local_device_ids(env) -> list[int] | None:
  """The GPUs this SLURM task drives. JAX's own SLURM discovery gives task k of a node GPU k
  alone, so one task per node would drive one GPU of eight; here a node's visible GPUs are
  split evenly among its tasks (all of them for one task, its own for a task bound to
  one by --gpus-per-task=1). None where the GPU count is unknown (JAX then decides)."""
  visible = env.get("CUDA_VISIBLE_DEVICES", "")
  gpus = (len(visible.split(",")) if visible else
          int(env["SLURM_GPUS_ON_NODE"]) if env.get("SLURM_GPUS_ON_NODE") else None)
  per_node = _tasks_per_node(env)
  node = int(env.get("SLURM_NODEID", 0))
  tasks = per_node[node] if node < len(per_node) else int(env.get("SLURM_NTASKS_PER_NODE", 1))
  if gpus is None:
    return None
  if gpus % tasks and gpus != 1:
    raise ValueError(f"SLURM gives {tasks} tasks on this node and {gpus} visible GPUs: "
                     "start one task per node or one per GPU (srun --ntasks-per-node)")
  share = gpus // tasks if gpus >= tasks else 1
  first = 0 if gpus == 1 else int(env.get("SLURM_LOCALID", 0)) * share
  return list(range(first, first + share))


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Makes this process one of a multi-process JAX run, or leaves it alone.

  mode 'auto': explicit flags if a coordinator is given; else what launched the process
  (detected_cluster: a TPU pod's or SLURM's own discovery, or the JAX_ENV variables); else
  a single process. 'off': always a single process.
  """
  if mode not in MODES:
    raise ValueError(f"--multihost={mode!r}: use one of {MODES}")
  explicit = (coordinator_address, num_processes, process_id)
  cluster = detected_cluster()
  if mode == "off" or (not any(v is not None for v in explicit) and cluster is None):
    return
  if coordinator_address is None:
    if num_processes is not None or process_id is not None:
      raise ValueError("--num_processes/--process_id need --coordinator_address=HOST:PORT "
                       "(the address of process 0)")
    if cluster == "slurm":           # JAX's discovery, with every GPU this task holds
      jax.distributed.initialize(local_device_ids=slurm_local_device_ids(os.environ))
      return
    if cluster != "env":
      jax.distributed.initialize()     # a TPU pod's own discovery
      return
    coordinator_address, num_processes, process_id = (
        os.environ[JAX_ENV[0]], int(os.environ[JAX_ENV[1]]), int(os.environ[JAX_ENV[2]]))
  if num_processes is None or process_id is None:
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


class Preemption:
  """Tells the loop to save and stop after a step because the VM is being preempted
  (SIGTERM, what a TPU VM receives).

  One process: a SIGTERM handler sets a flag. Several: JAX's preemption service (started by
  jax.distributed.initialize) spreads a notice any process gets to all of them and picks
  one step they all stop after, so they save the same checkpoint. `reached` must then be
  called after every step on every process.
  """

  def __init__(self):
    self.requested = False
    self._previous_handler = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """True once this run must stop after `step` (then for good)."""
    if not self.requested and jax.process_count() > 1:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested
