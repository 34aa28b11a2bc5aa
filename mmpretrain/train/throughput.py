"""How fast a run goes, for its logs: step time, tokens/s, model FLOPs utilization against
the devices' bf16 peak, device memory; and a profiler window over chosen steps."""
import time

import jax

from mmpretrain import storage
from mmpretrain.hardware import peak_bf16_flops
from mmpretrain.scaling.flops import train_flops_per_token


class Throughput:
  """Figures over the steps since the previous `read` (the first read includes compiling)."""

  def __init__(self, config, devices, start_step: int):
    self.flops_per_token = train_flops_per_token(config)
    peak = peak_bf16_flops(devices[0].device_kind)
    self.peak = peak * len(devices) if peak else None      # none known on CPUs: no MFU
    self.local_device = jax.local_devices()[0]
    self.time, self.step = time.perf_counter(), start_step - 1

  def read(self, step: int, tokens: int) -> dict:
    """`tokens`: tokens trained on (the whole global batch) since the previous read."""
    now = time.perf_counter()
    seconds, steps = max(now - self.time, 1e-9), max(step - self.step, 1)
    self.time, self.step = now, step
    figures = {"tokens_per_s": tokens / seconds, "step_s": seconds / steps}
    if self.peak:
      figures["mfu"] = figures["tokens_per_s"] * self.flops_per_token / self.peak
    memory = self.local_device.memory_stats()               # None on CPU
    if memory and "bytes_in_use" in memory:
      figures["device_memory_gb"] = memory["bytes_in_use"] / 1e9
      figures["device_peak_memory_gb"] = memory.get("peak_bytes_in_use", 0) / 1e9
    return figures


class ProfileWindow:
  """A jax.profiler trace of steps first..first+count-1 into <workdir>/profile (view it in
  TensorBoard's profile tab or xprof); count 0: none."""

  def __init__(self, workdir: str, first: int, count: int):
    self.directory = storage.join(workdir, "profile")
    self.first, self.last = first, first + count - 1
    self.tracing = False

  def before(self, step: int) -> None:
    if self.first <= step <= self.last and not self.tracing:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, step: int, state) -> None:
    if self.tracing and step >= self.last:
      jax.block_until_ready(state)            # the traced steps' device work, all of it
      jax.profiler.stop_trace()
      self.tracing = False
