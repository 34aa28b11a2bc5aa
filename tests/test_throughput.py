"""Training-log figures: step time, tokens/s and MFU from a controlled clock, device memory
where the device reports it, the bf16 peaks by device kind, and the profiler window."""
import glob
import os

import jax
import jax.numpy as jnp
import pytest

import base
from mmpretrain.hardware import peak_bf16_flops
from mmpretrain.scaling.flops import train_flops_per_token
from mmpretrain.train import throughput


class FakeDevice:
  def __init__(self, kind, memory=None):
    self.device_kind, self.memory = kind, memory

  def memory_stats(self):
    return self.memory


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("cpu", None)])
def test_peaks_by_device_kind(kind, peak):
  assert peak_bf16_flops(kind) == peak


def test_step_time_tokens_per_second_mfu_and_memory(monkeypatch):
  config = base.get_config("runlocal")
  clock = iter([100.0, 102.0, 103.0])
  monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
  memory = {"bytes_in_use": 3e9, "peak_bytes_in_use": 5e9}
  monkeypatch.setattr(throughput.jax, "local_devices", lambda: [FakeDevice("TPU v5 lite", memory)])
  meter = throughput.Throughput(config, [FakeDevice("TPU v5 lite")] * 4, start_step=0)
  first = meter.read(step=9, tokens=20_000)          # steps 0..9 in 2 s
  assert first["step_s"] == pytest.approx(0.2) and first["tokens_per_s"] == pytest.approx(1e4)
  assert first["mfu"] == pytest.approx(1e4 * train_flops_per_token(config) / (4 * 197e12))
  assert (first["device_memory_gb"], first["device_peak_memory_gb"]) == (3.0, 5.0)
  second = meter.read(step=19, tokens=5_000)         # steps 10..19 in 1 s
  assert second["step_s"] == pytest.approx(0.1) and second["tokens_per_s"] == pytest.approx(5e3)


def test_no_mfu_or_memory_where_the_device_does_not_say():
  figures = throughput.Throughput(base.get_config("runlocal"), jax.devices(), 0).read(0, 10)
  assert set(figures) == {"tokens_per_s", "step_s"}       # the test suite runs on CPU


def test_the_profile_window_traces_its_steps(tmp_path):
  window = throughput.ProfileWindow(str(tmp_path), first=2, count=2)
  state = jnp.zeros(3)
  for step in range(6):
    window.before(step)
    state = state + 1
    if step == 2:
      assert window.tracing
    window.after(step, state)
  assert not window.tracing
  assert glob.glob(os.path.join(tmp_path, "profile", "**", "*.xplane.pb"), recursive=True)
